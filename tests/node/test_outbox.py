"""In-process tests of node/outbox.py: one write per socket per loop turn, and the slow-consumer bound.

Connection objects sit on tests/node/fake_transport.py, whose write buffer
grows when its peer does not read: that is how a slow consumer looks to the
outbox (`get_write_buffer_size`).
"""

from __future__ import annotations

import asyncio

from node.outbox import Outbox
from tests.node.fake_transport import fake_connection


async def next_turns(count: int = 2) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


class Overflows:
    """An on_overflow callback that records and closes the connection, as the worker does."""

    def __init__(self) -> None:
        self.reported: list[tuple[object, int]] = []

    def __call__(self, conn, buffered: int) -> None:
        self.reported.append((conn, buffered))
        conn.closed = True
        conn.transport.abort()


async def test_frames_queued_in_one_turn_leave_in_one_write_in_order():
    outbox = Outbox(1 << 20, Overflows())
    first, second = fake_connection(), fake_connection()
    for i in range(5):
        outbox.push(first, b"a%d" % i)
        outbox.push(second, b"b%d" % i)
    assert first.transport.writes == [] and second.transport.writes == []  # not before the end of the turn
    await next_turns()
    assert first.transport.writes == [b"a0a1a2a3a4"] and second.transport.writes == [b"b0b1b2b3b4"]
    assert first.pending == [] and second.pending == []


async def test_a_single_frame_is_written_as_the_same_object():
    outbox = Outbox(1 << 20, Overflows())
    conn, frame = fake_connection(), b"x" * 100
    outbox.push(conn, frame)
    await next_turns()
    assert len(conn.transport.writes) == 1 and conn.transport.writes[0] is frame


async def test_each_turn_gets_its_own_write():
    outbox = Outbox(1 << 20, Overflows())
    conn = fake_connection()
    outbox.push(conn, b"1")
    await next_turns()
    outbox.push(conn, b"2")
    outbox.push(conn, b"3")
    await next_turns()
    assert conn.transport.writes == [b"1", b"23"]


async def test_a_coalescing_delay_gathers_frames_of_several_turns():
    outbox = Outbox(1 << 20, Overflows(), coalesce_delay_s=0.02)
    conn = fake_connection()
    for i in range(3):
        outbox.push(conn, b"%d" % i)
        await next_turns(1)
    assert conn.transport.writes == []
    await asyncio.sleep(0.05)
    assert conn.transport.writes == [b"012"]


async def test_nothing_is_queued_for_or_written_to_a_closed_connection():
    outbox = Outbox(1 << 20, Overflows())
    closed, closing, open_ = fake_connection(), fake_connection(), fake_connection()
    closed.closed = True
    outbox.push(closed, b"x")
    assert closed.pending == []
    outbox.push(closing, b"y")
    closing.transport.close()  # the socket went away before the flush
    outbox.push(open_, b"z")
    await next_turns()
    assert closed.transport.writes == [] and closing.transport.writes == [] and closing.pending == []
    assert open_.transport.writes == [b"z"]
    assert closing.transport.writes_after_close == 0


async def test_flush_one_writes_now_and_the_end_of_turn_flush_does_not_repeat_it():
    outbox = Outbox(1 << 20, Overflows())
    conn = fake_connection()
    outbox.push(conn, b"a")
    outbox.push(conn, b"b")
    outbox.flush_one(conn)
    assert conn.transport.writes == [b"ab"]
    conn.transport.write(b"<close>")  # what must come last, e.g. a close frame
    await next_turns()
    assert conn.transport.writes == [b"ab", b"<close>"]
    outbox.flush_one(conn)  # nothing queued: no empty write
    assert conn.transport.writes == [b"ab", b"<close>"]


async def test_a_buffer_at_the_bound_is_kept_and_one_byte_over_is_reported_once():
    overflows = Overflows()
    outbox = Outbox(100, overflows)
    at_bound, over = fake_connection(reading=False), fake_connection(reading=False)
    outbox.push(at_bound, b"x" * 100)
    outbox.push(over, b"x" * 101)
    await next_turns()
    assert overflows.reported == [(over, 101)]
    assert not at_bound.closed and over.closed and over.transport.aborted


async def test_a_slow_consumer_costs_bounded_memory_and_a_reading_one_is_never_cut():
    overflows = Overflows()
    outbox = Outbox(10_000, overflows)
    slow, reading = fake_connection(reading=False), fake_connection(reading=True)
    frame = b"f" * 1_000
    for _ in range(200):  # 200 turns of 3 frames: 600 kB offered to each
        for _ in range(3):
            outbox.push(slow, frame)
            outbox.push(reading, frame)
        await next_turns()
        assert len(slow.pending) <= 3
    assert [conn for conn, _ in overflows.reported] == [slow]
    assert slow.transport.buffered_bytes <= 10_000 + 3 * 1_000  # the bound plus the write that crossed it
    assert len(reading.transport.stream) == 600 * 1_000 and not reading.closed


async def test_a_consumer_that_catches_up_is_not_cut():
    overflows = Overflows()
    outbox = Outbox(5_000, overflows)
    conn = fake_connection(reading=False)
    for _ in range(50):
        outbox.push(conn, b"f" * 1_000)
        await next_turns()
        if conn.transport.buffered_bytes >= 4_000:
            conn.transport.drain()
    assert overflows.reported == [] and not conn.closed
    assert len(conn.transport.stream) == 50_000
