"""Gaps in a room's stream on a worker: filled from history, or announced to the members, never silent.

In-process, like tests/node/test_hub.py (whose harness this reuses): a hub, the
memory bus (GatedBus), the real outbox, fake transports. Covered: a jump in
`seq` on the live stream, a gap fill whose history read fails (retried, then
announced), a second bus outage while a fill is still reading, a gap larger
than one fill may deliver, an epoch change on the live stream, and the fill
state released whatever happens. The notices are fed to the SDK's state
machine (router/client_core.py) to check a client sees a declared gap, not a
silent one.
"""

from __future__ import annotations

import asyncio

from chaos.eventually import eventually
from node import envelope, protocol
from node.bus import BusMessage, BusUnavailable
from router.backoff import BackoffPolicy
from router.client_core import ClientCore, Gap, Joined, Message
from tests.node.fake_transport import fake_connection, received
from tests.node.test_hub import SENDER, TS_MS, Node, lose_deliveries, seqs, settle, texts

QUICK = BackoffPolicy(base_s=0.001, factor=1.0, cap_s=0.001, jitter=0.0)  # no test waits for a real backoff


def quick_node(attempts: int = 3) -> Node:
    node = Node()
    node.hub.fill_backoff, node.hub.fill_attempts = QUICK, attempts
    return node


async def member_who_got_m1(node: Node):
    """A member of room "r" on `node` that has been delivered m1 (seq 1)."""
    conn = fake_connection()
    await node.join(conn, "r")
    await node.publish("r", "m1")
    await settle()
    return conn


async def member_missing_m2(attempts: int = 3):
    """A node and a member of "r" that got m1 while m2 (seq 2) was published but never delivered live."""
    node = quick_node(attempts)
    conn = await member_who_got_m1(node)
    await lose_deliveries(node, "r", "m2")
    return node, conn


def body(text: str) -> bytes:
    return envelope.pack(envelope.Envelope(TS_MS, SENDER, "text", text))


def notices(conn) -> list[dict]:
    """The unasked `joined` frames (no id, recovered: false) a member was sent."""
    return [f for f in received(conn) if f["type"] == "joined" and "recovered" in f]


def fail_history_reads(node: Node, times: int) -> list[int]:
    """Make the next `times` history reads fail with BusUnavailable; returns the call counter."""
    calls = [0]
    read = node.bus.read_history

    async def flaky(*args):
        calls[0] += 1
        if calls[0] <= times:
            raise BusUnavailable("Redis unavailable")
        return await read(*args)

    node.bus.read_history = flaky  # type: ignore[method-assign]
    return calls


def no_fill_running(node: Node, room: str) -> bool:
    entry = node.hub.rooms[room]
    return entry.filling is None and entry.fill_task is None


async def test_a_jump_in_seq_on_the_live_stream_is_filled_from_history():
    node = quick_node()
    conn = await member_who_got_m1(node)
    await lose_deliveries(node, "r", "m2", "m3")  # never delivered live (a dropped subscription, say)
    await node.publish("r", "m4")  # the next live message jumps from 1 to 4
    await eventually(lambda: seqs(conn, "r"), equals=[1, 2, 3, 4], what="the gap filled in order")
    assert texts(conn) == ["m1", "m2", "m3", "m4"] and notices(conn) == []
    assert no_fill_running(node, "r")


async def test_a_failed_gap_fill_is_retried_until_history_answers():
    node, conn = await member_missing_m2(attempts=5)
    calls = fail_history_reads(node, times=3)
    fill = node.hub.fill_gaps(limit=100)
    await node.publish("r", "m3")
    await fill
    await settle()
    assert calls[0] == 4
    assert texts(conn) == ["m1", "m2", "m3"] and notices(conn) == []


async def test_a_gap_fill_that_finally_fails_is_announced_at_the_gap():
    node, conn = await member_missing_m2(attempts=2)
    fail_history_reads(node, times=100)
    await node.hub.fill_gaps(limit=100)
    await node.publish("r", "m3")
    await eventually(lambda: texts(conn), equals=["m1", "m3"], what="the stream goes on after the gap")
    frames = [f for f in received(conn) if f["type"] in ("joined", "message")]
    assert [f.get("text", f.get("reason")) for f in frames[1:]] == ["m1", protocol.RECOVERY_HISTORY_UNAVAILABLE, "m3"]
    notice = notices(conn)[0]
    assert notice["recovered"] is False and "id" not in notice
    assert (notice["seq"], notice["epoch"]) == (2, frames[-1]["epoch"])  # the stream goes on after seq 2
    assert no_fill_running(node, "r")


async def test_a_second_outage_during_a_fill_is_filled_too():
    node, conn = await member_missing_m2()
    node.bus.history_gate = asyncio.Event()
    first = node.hub.fill_gaps(limit=100)
    await settle()  # its read has taken its snapshot (m2) and waits on the wire
    await lose_deliveries(node, "r", "m3")  # a second outage: m3 is not in that snapshot
    second = node.hub.fill_gaps(limit=100)  # the room is still filling
    node.bus.history_gate.set()
    await asyncio.gather(first, second)
    await node.publish("r", "m4")
    await eventually(lambda: texts(conn), equals=["m1", "m2", "m3", "m4"], what="both outages filled")
    assert notices(conn) == []


async def test_a_gap_larger_than_one_fill_is_delivered_in_part_and_announced():
    node = quick_node()
    conn = await member_who_got_m1(node)
    await lose_deliveries(node, "r", *(f"lost{i}" for i in range(2, 8)))  # seq 2..7
    await node.hub.fill_gaps(limit=3)
    await node.publish("r", "m8")
    await eventually(lambda: seqs(conn, "r")[-1:], equals=[8], what="the live stream going on")
    assert seqs(conn, "r") == [1, 2, 3, 4, 8]  # the first page (limit 3), then the live stream
    stream = [f for f in received(conn) if f["type"] in ("joined", "message")][1:]
    assert [f.get("seq") if f["type"] == "message" else f["reason"] for f in stream] == \
        [1, 2, 3, 4, protocol.RECOVERY_TOO_MANY_MISSED, 8]
    assert notices(conn)[0]["seq"] == 7


async def json_and_msgpack_members_who_got_old(node: Node):
    """A JSON and a msgpack member of room "r" on `node`, both delivered "old" (seq 1 of the first epoch)."""
    conn, binary = fake_connection(protocol.JSON), fake_connection(protocol.MSGPACK)
    await node.join(conn, "r")
    await node.join(binary, "r")
    await node.publish("r", "old")
    await settle()
    return conn, binary


async def test_an_epoch_change_on_the_live_stream_is_announced_before_its_first_message():
    node = quick_node()
    conn, binary = await json_and_msgpack_members_who_got_old(node)
    node.hub.deliver(BusMessage("r", 1, "E2", body("new")))  # Redis lost or rolled back the room's state
    await settle()
    for member in (conn, binary):
        stream = [f for f in received(member) if f["type"] in ("joined", "message")][1:]
        assert [(f["type"], f["epoch"], f["seq"]) for f in stream][1:] == [("joined", "E2", 0), ("message", "E2", 1)]
        assert stream[1]["recovered"] is False and stream[1]["reason"] == protocol.RECOVERY_EPOCH_CHANGED


async def test_a_new_epoch_first_seen_past_its_first_message_is_filled_from_its_start():
    # A worker that subscribes on a promoted replica after the new epoch began sees it start at seq 3.
    node = quick_node()
    conn, binary = await json_and_msgpack_members_who_got_old(node)
    node.bus.fail_over("E2")
    await lose_deliveries(node, "r", "n1", "n2")
    await node.publish("r", "n3")
    for member in (conn, binary):
        await eventually(lambda: texts(member), equals=["old", "n1", "n2", "n3"], what="the new epoch from its start")
        stream = [f for f in received(member) if f["type"] in ("joined", "message")][2:]
        assert [(f["type"], f["epoch"], f["seq"]) for f in stream] == [
            ("joined", "E2", 0), ("message", "E2", 1), ("message", "E2", 2), ("message", "E2", 3)]
        assert stream[0]["recovered"] is False and stream[0]["reason"] == protocol.RECOVERY_EPOCH_CHANGED
    assert no_fill_running(node, "r")


async def test_a_new_epoch_whose_start_cannot_be_read_is_announced_at_its_first_delivered_message():
    node = quick_node(attempts=2)
    conn = await member_who_got_m1(node)
    node.bus.fail_over("E2")
    await lose_deliveries(node, "r", "n1", "n2")
    fail_history_reads(node, times=100)
    await node.publish("r", "n3")
    await eventually(lambda: texts(conn), equals=["m1", "n3"], what="the live stream goes on after the failed fill")
    notice = notices(conn)[0]
    assert (notice["epoch"], notice["seq"], notice["reason"]) == ("E2", 2, protocol.RECOVERY_EPOCH_CHANGED)
    assert no_fill_running(node, "r")


async def test_a_room_that_had_no_stream_fills_the_first_messages_it_missed():
    node = quick_node()
    conn = fake_connection()
    assert (await node.join(conn, "r"))["epoch"] == ""  # no message yet: no stream to continue
    await lose_deliveries(node, "r", "m1", "m2")
    await node.publish("r", "m3")
    await eventually(lambda: seqs(conn, "r"), equals=[1, 2, 3], what="the room's first messages filled in order")
    assert texts(conn) == ["m1", "m2", "m3"] and notices(conn) == []


async def test_the_fill_state_is_released_whatever_the_read_raises():
    node, conn = await member_missing_m2()

    async def broken(*args):
        raise RuntimeError("a bug in the bus")

    node.bus.read_history = broken  # type: ignore[method-assign]
    fill = node.hub.fill_gaps(limit=100)
    await node.publish("r", "m3")
    await fill
    await settle()
    assert no_fill_running(node, "r")
    assert texts(conn) == ["m1", "m3"] and notices(conn)[0]["reason"] == protocol.RECOVERY_HISTORY_UNAVAILABLE
    await node.publish("r", "m4")  # the room is not stuck holding
    await eventually(lambda: texts(conn), equals=["m1", "m3", "m4"], what="live delivery after the failed fill")


async def test_a_fill_holding_too_many_live_messages_gives_up_and_announces():
    node = Node(max_join_buffer_messages=3)
    node.hub.fill_backoff = QUICK
    conn = await member_who_got_m1(node)
    await lose_deliveries(node, "r", "m2")
    fail_history_reads(node, times=10_000)
    node.hub.fill_backoff = BackoffPolicy(base_s=60.0, cap_s=60.0, jitter=0.0)  # a fill that would wait long
    node.hub.fill_attempts = 10
    fill = node.hub.fill_gaps(limit=100)
    for i in range(3, 8):
        await node.publish("r", f"m{i}")
    await asyncio.wait_for(fill, timeout=10)
    await settle()
    assert texts(conn) == ["m1", "m3", "m4", "m5", "m6", "m7"]
    assert notices(conn)[0]["reason"] == protocol.RECOVERY_HISTORY_UNAVAILABLE
    assert no_fill_running(node, "r")


async def test_the_sdk_sees_an_announced_gap_as_declared_not_as_a_gap_to_repair():
    node, conn = await member_missing_m2(attempts=1)
    fail_history_reads(node, times=100)
    await node.hub.fill_gaps(limit=100)
    await node.publish("r", "m3")
    await eventually(lambda: texts(conn), equals=["m1", "m3"], what="m3 delivered")
    core = ClientCore()
    core.connection_opened("ws://127.0.0.1:1/ws")
    core.join("r")
    core.frames_to_send()
    events = []
    for frame in received(conn):
        if frame["type"] == "joined" and "recovered" not in frame:
            frame = dict(frame, id=1)  # the reply to the core's join
        events += core.receive(frame)
    assert not any(isinstance(event, Gap) for event in events)
    assert [e.frame.get("text") for e in events if isinstance(e, Message)] == ["m1", "m3"]
    assert any(isinstance(e, Joined) and e.frame.get("recovered") is False for e in events)
    assert core.frames_to_send() == []  # no leave + join repair queued
