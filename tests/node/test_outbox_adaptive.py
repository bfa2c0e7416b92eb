"""node/outbox.py's adaptive coalescing: no hold on an idle worker, frames of several turns share a write on a busy one.

The busy rule reads `perf_counter` around each flush; these tests give
the outbox a clock that only moves when a transport writes (each write
"costs" a fixed time), so whether the worker counts as busy does not depend
on how fast this machine is. The timers themselves are the real event
loop's. Real sockets (socket pairs on the loop) where the bytes a peer reads
matter; tests/node/fake_transport.py where only the writes are counted.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from node import outbox as outbox_module
from node.outbox import Outbox
from tests.node.fake_transport import fake_connection
from tests.node.test_outbox import Overflows, next_turns
from tests.wsclient import WsClient


class WriteClock:
    """A perf_counter that advances `cost_s` per transport write, and never otherwise."""

    def __init__(self, cost_s: float) -> None:
        self.now = 1000.0
        self.cost_s = cost_s

    def __call__(self) -> float:
        return self.now

    def charge(self, transport) -> None:
        write = transport.write

        def costly_write(data: bytes) -> None:
            self.now += self.cost_s
            write(data)

        transport.write = costly_write


@pytest.fixture
def clock(monkeypatch):
    fake = WriteClock(cost_s=0.0)
    monkeypatch.setattr(outbox_module, "perf_counter", fake)
    return fake


async def wait_for(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


async def test_an_idle_worker_writes_at_the_end_of_the_turn_even_with_a_hold_allowed(clock):
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=5.0)
    conn = fake_connection()
    clock.charge(conn.transport)
    clock.cost_s = 0.001
    outbox.push(conn, b"1")
    await next_turns()
    assert conn.transport.writes == [b"1"]
    clock.now += 1.0  # the worker did nothing for a second after that flush
    outbox.push(conn, b"2")
    await next_turns()
    assert conn.transport.writes == [b"1", b"2"]


async def test_a_busy_worker_holds_frames_of_several_turns_for_one_write_in_order(clock):
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=5.0)
    members = [fake_connection() for _ in range(3)]
    for conn in members:
        clock.charge(conn.transport)
    clock.cost_s = 0.1  # each write costs 100 ms: a flush costs 300 ms, so the next 600 ms are busy
    for frame in (b"a", b"b"):  # the first flush has none before it: the second is the first to write them again
        for conn in members:
            outbox.push(conn, frame)
        await next_turns()
    assert [conn.transport.writes for conn in members] == [[b"a", b"b"]] * 3
    for frame in (b"c", b"d", b"e"):  # one message per turn, as from a single steady publisher
        for conn in members:
            outbox.push(conn, frame)
        await next_turns(1)
    assert [conn.transport.writes for conn in members] == [[b"a", b"b"]] * 3  # held
    await wait_for(lambda: all(len(conn.transport.writes) == 3 for conn in members))
    assert [conn.transport.writes for conn in members] == [[b"a", b"b", b"cde"]] * 3


async def test_a_busy_worker_whose_flushes_write_other_sockets_each_time_does_not_hold(clock):
    # Many small rooms: each message goes to a few sockets that had nothing in the flush before.
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=5.0)
    rooms = [[fake_connection() for _ in range(3)] for _ in range(4)]
    for room in rooms:
        for conn in room:
            clock.charge(conn.transport)
    clock.cost_s = 0.1  # as busy as above: a flush costs 300 ms
    for turn, room in enumerate(rooms * 2):
        for conn in room:
            outbox.push(conn, b"%d;" % turn)
        await next_turns(1)  # written at the end of the turn it was queued in, never held
        assert all(conn.transport.writes[-1] == b"%d;" % turn for conn in room)
    assert [conn.transport.writes for conn in rooms[0]] == [[b"0;", b"4;"]] * 3


async def test_the_hold_never_exceeds_max_hold(clock):
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=0.05)
    conn = fake_connection()
    clock.charge(conn.transport)
    clock.cost_s = 3600.0  # a flush "costing" an hour would hold the next frame two hours
    for frame in (b"1", b"2"):  # the second flush writes the same socket again: the hold starts after it
        outbox.push(conn, frame)
        await next_turns()
    outbox.push(conn, b"3")
    await next_turns(1)
    assert conn.transport.writes == [b"1", b"2"]
    await wait_for(lambda: conn.transport.writes == [b"1", b"2", b"3"], timeout_s=5.0)


async def test_max_hold_zero_writes_every_turn_however_busy(clock):
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=0.0)
    conn = fake_connection()
    clock.charge(conn.transport)
    clock.cost_s = 3600.0
    for frame in (b"1", b"2", b"3"):
        outbox.push(conn, frame)
        await next_turns()
    assert conn.transport.writes == [b"1", b"2", b"3"]


async def test_frames_held_while_busy_still_count_against_the_slow_consumer_bound(clock):
    overflows = Overflows()
    outbox = Outbox(250, overflows, max_hold_s=5.0)
    slow, reading = fake_connection(reading=False), fake_connection(reading=True)
    for conn in (slow, reading):
        clock.charge(conn.transport)
    clock.cost_s = 0.1
    for _ in range(2):  # two flushes of the same sockets: the hold starts after the second
        for conn in (slow, reading):
            outbox.push(conn, b"x" * 50)
        await next_turns()
    for _ in range(2):  # held: 200 more bytes each, written together
        for conn in (slow, reading):
            outbox.push(conn, b"x" * 100)
        await next_turns(1)
    assert len(slow.transport.writes) == 2 and not overflows.reported  # held, not yet over the bound
    await wait_for(lambda: overflows.reported)
    assert overflows.reported == [(slow, 300)] and slow.closed and not reading.closed
    assert reading.transport.stream == b"x" * 300


async def test_flush_one_writes_held_frames_before_what_must_come_last(clock):
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=5.0)
    conn = fake_connection()
    clock.charge(conn.transport)
    clock.cost_s = 0.5
    for frame in (b"a", b"a2"):  # two flushes of the same socket: the hold starts after the second
        outbox.push(conn, frame)
        await next_turns()
    outbox.push(conn, b"b")  # busy: held
    outbox.push(conn, b"c")
    await next_turns(1)
    assert conn.transport.writes == [b"a", b"a2"]
    outbox.flush_one(conn)
    conn.transport.write(b"<close>")
    assert conn.transport.writes == [b"a", b"a2", b"bc", b"<close>"]
    await asyncio.sleep(0)
    assert conn.pending == []


# --- real sockets -----------------------------------------------------------------------------


class SocketMember:
    """A Connection-like writable over one end of a real socket pair; the test reads the other end."""

    def __init__(self, transport: asyncio.Transport, peer: socket.socket) -> None:
        self.pending: list[bytes] = []
        self.flushed_in = -1
        self.closed = False
        self.transport = transport
        self.peer = peer

    def read_available(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 16)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@pytest.fixture
async def socket_members():
    loop = asyncio.get_running_loop()
    made: list[SocketMember] = []

    async def make(count: int) -> list[SocketMember]:
        for _ in range(count):
            ours, peer = socket.socketpair()
            peer.setblocking(False)
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
            made.append(SocketMember(transport, peer))
        return made[-count:]

    yield make
    for member in made:
        member.transport.abort()
        member.peer.close()


async def test_real_sockets_at_idle_the_peer_can_read_the_frame_after_one_turn(socket_members):
    (member,) = await socket_members(1)
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=5.0)
    outbox.push(member, b"hello")
    assert member.read_available() == b""
    await next_turns(1)  # the flush runs in the turn after the push: no timer
    assert member.read_available() == b"hello"


async def test_real_sockets_a_busy_worker_delivers_every_frame_in_order_in_fewer_writes(socket_members, clock):
    members = await socket_members(50)
    outbox = Outbox(1 << 20, Overflows(), max_hold_s=0.2)
    writes = [0]

    def count(transport):
        write = transport.write

        def counted(data: bytes) -> None:
            writes[0] += 1
            clock.now += 0.001  # 50 ms per flush of 50 sockets: a busy worker
            write(data)

        transport.write = counted

    for member in members:
        count(member.transport)
    messages = [b"m%03d;" % n for n in range(40)]
    for frame in messages:  # one message per loop turn
        for member in members:
            outbox.push(member, frame)
        await next_turns(1)
    received = {id(member): b"" for member in members}

    def all_read() -> bool:
        for member in members:
            received[id(member)] += member.read_available()
        return all(len(data) == len(b"".join(messages)) for data in received.values())

    await wait_for(all_read)
    assert all(data == b"".join(messages) for data in received.values())
    assert writes[0] < 40 * 50  # frames of several turns shared writes


# --- a real worker process ----------------------------------------------------------------------


async def test_a_busy_worker_delivers_a_burst_to_every_member_complete_and_in_order(start_node):
    """A publisher's burst keeps a real worker (default write_hold_max_ms) flushing to every member:
    what its adaptive hold gathers arrives complete, once, in publish order."""
    node = start_node(1)
    members = [await WsClient.connect(node.ws_url(0)) for _ in range(40)]
    publisher = members[0]
    try:
        for member in members:
            await member.join("burst")
        count = 150
        for n in range(count):  # back to back, not waiting for acks: one message per loop turn or more
            await publisher.send({"type": "message", "room": "burst", "text": f"m{n}"})
        for member in members:
            texts, seqs = [], []
            while len(texts) < count:
                frame = await member.expect("message", timeout_s=20.0)
                texts.append(frame["text"])
                seqs.append(frame["seq"])
            assert texts == [f"m{n}" for n in range(count)]
            assert seqs == list(range(seqs[0], seqs[0] + count))
    finally:
        for member in members:
            await member.close()
