"""In-process tests of node/hub.py with the memory bus, the real outbox and fake transports.

No processes, no sockets: Connection objects sit on tests/node/fake_transport.py
and one test event loop drives Hub + MemoryBus + Outbox the way node/worker.py
does (join: hub.join, then `joined`, the history page and go_live with no
await in between). A MemoryBus subclass can hold a subscription or a
history answer (`GatedBus`) so a test can put live messages exactly where a
join's history read or a gap fill is in progress.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from node import envelope, frames, protocol
from node.bus import POSITION_ONLY, BusMessage, BusUnavailable, HistoryPage, Position
from node.bus_memory import MemoryBus
from node.connection import Connection
from node.history import HistoryPolicy
from node.hub import Hub
from node.metrics import NodeMetrics
from node.outbox import Outbox
from tests.node.fake_transport import fake_connection, received

JSON, MSGPACK = protocol.JSON, protocol.MSGPACK
TS_MS, SENDER = 1_700_000_000_000, "publisher-1"


class GatedBus(MemoryBus):
    """A MemoryBus (history kept) whose subscribe and history answers can be held.

    A held history read takes its snapshot at once and answers when the gate
    opens, like a Redis reply still on the wire; a held subscribe is not live
    until its gate opens.
    """

    def __init__(self) -> None:
        super().__init__(policy_for=lambda room: HistoryPolicy(size=1000, ttl_s=0))
        self.subscribe_gate: asyncio.Event | None = None
        self.history_gate: asyncio.Event | None = None
        self.history_down = False
        self.subscribes: list[str] = []
        self.unsubscribes: list[str] = []

    async def subscribe(self, room: str) -> None:
        self.subscribes.append(room)
        if self.subscribe_gate is not None:
            await self.subscribe_gate.wait()
        await super().subscribe(room)

    def unsubscribe(self, room: str) -> None:
        self.unsubscribes.append(room)
        super().unsubscribe(room)

    def fail_over(self, epoch: str) -> None:
        """Redis lost every room's state (a promoted replica, a restart): the next publish of a room starts
        `epoch` at seq 1, and the old epoch's history is gone, as node/bus_redis.py's publish script does."""
        self._epoch = epoch
        self._seq.clear()
        self._history.clear()

    async def read_history(self, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        if self.history_down:
            raise BusUnavailable("history unavailable")
        page = await super().read_history(room, since_seq, since_epoch, limit)
        if self.history_gate is not None:
            await self.history_gate.wait()
        return page


class Node:
    """One worker's hub, outbox and bus, driven as node/worker.py drives them."""

    def __init__(self, max_outbound_bytes: int = 1 << 20, max_join_buffer_messages: int = 10_000) -> None:
        self.bus = GatedBus()
        self.outbox = Outbox(max_outbound_bytes, self.on_overflow)
        self.metrics = NodeMetrics("test")
        self.hub = Hub(self.bus, self.outbox, self.metrics, max_join_buffer_messages)
        self.bus.set_handlers(self.hub.deliver)
        self.overflowed: list[tuple[Connection, int]] = []

    def on_overflow(self, conn, buffered: int) -> None:
        self.overflowed.append((conn, buffered))
        conn.closed = True
        conn.close_reason = "slow_consumer"
        conn.transport.abort()

    async def join(self, conn: Connection, room: str, since: tuple[int, str] | None = None) -> dict:
        """Join as the worker does; returns the `joined` frame sent."""
        since_seq, since_epoch = (POSITION_ONLY, "") if since is None else since
        page = await self.hub.join(conn, room, since_seq, since_epoch, 100)
        joined = protocol.joined(room, page.seq, page.epoch)
        self.outbox.push(conn, conn.frame(joined))
        for message in page.messages:
            frame = self.hub.message_frame(message, conn.binary)
            if frame is not None:
                self.outbox.push(conn, frame)
        self.hub.go_live(conn, room, page.epoch, page.seq)
        return joined

    def disconnect(self, conn: Connection) -> None:
        conn.closed = True
        self.hub.leave_all(conn)

    async def publish(self, room: str, text: str) -> Position:
        return await self.bus.publish(room, envelope.pack(envelope.Envelope(TS_MS, SENDER, "text", text)))

    def delivered_total(self) -> float:
        return self.metrics.registry.get_sample_value("ringcast_messages_delivered_total")


async def settle() -> None:
    """Let the bus deliver what was published and the outbox flush it (each takes one loop turn)."""
    for _ in range(4):
        await asyncio.sleep(0)


def texts(conn: Connection, room: str | None = None) -> list[str]:
    return [f["text"] for f in received(conn) if f["type"] == "message" and room in (None, f["room"])]


def seqs(conn: Connection, room: str) -> list[int]:
    return [f["seq"] for f in received(conn) if f["type"] == "message" and f["room"] == room]


# --- fan-out ------------------------------------------------------------------------------

async def test_fan_out_reaches_every_member_exactly_once_and_in_order():
    node = Node()
    members = [fake_connection(JSON) for _ in range(3)] + [fake_connection(MSGPACK) for _ in range(3)]
    for conn in members:
        await node.join(conn, "r")
    sent = [f"m{i}" for i in range(25)]
    for text in sent:
        await node.publish("r", text)
    await settle()
    for conn in members:
        assert [f["type"] for f in received(conn)] == ["joined"] + ["message"] * 25
        assert texts(conn) == sent
        assert seqs(conn, "r") == list(range(1, 26))
        assert conn.transport.writes_after_close == 0
    assert node.delivered_total() == 25 * len(members)


async def test_the_frames_written_are_exactly_what_frames_and_envelope_encode():
    node = Node()
    text_member, binary_member = fake_connection(JSON), fake_connection(MSGPACK)
    await node.join(text_member, "r")
    await node.join(binary_member, "r")
    await settle()
    position = await node.publish("r", "hé \u2028")
    await settle()
    body = protocol.message("r", position.seq, position.epoch, TS_MS, SENDER, "text", "hé \u2028")
    assert text_member.transport.writes[-1] == frames.data_frame(protocol.encode(body, JSON), False)
    assert binary_member.transport.writes[-1] == frames.data_frame(protocol.encode(body, MSGPACK), True)
    assert received(text_member)[-1] == received(binary_member)[-1] == body


async def test_a_message_is_encoded_once_per_codec_and_the_same_bytes_go_to_every_member():
    node = Node()
    text_members = [fake_connection(JSON) for _ in range(3)]
    binary_members = [fake_connection(MSGPACK) for _ in range(2)]
    for conn in text_members + binary_members:
        await node.join(conn, "r")
    await settle()
    await node.publish("r", "once")
    await settle()
    text_writes = {id(conn.transport.writes[-1]) for conn in text_members}
    binary_writes = {id(conn.transport.writes[-1]) for conn in binary_members}
    assert len(text_writes) == 1 and len(binary_writes) == 1 and text_writes != binary_writes


async def test_messages_of_one_loop_turn_leave_in_one_write_per_member():
    node = Node()
    members = [fake_connection(JSON), fake_connection(MSGPACK)]
    for conn in members:
        await node.join(conn, "r")
    await settle()
    for conn in members:
        conn.transport.writes.clear()
    for i in range(10):
        await node.publish("r", f"m{i}")  # the memory bus delivers all ten in the next turn
    await settle()
    for conn in members:
        assert len(conn.transport.writes) == 1
        assert texts(conn) == [f"m{i}" for i in range(10)]


async def test_an_undecodable_bus_message_is_dropped_and_the_stream_goes_on():
    node = Node()
    conn = fake_connection()
    await node.join(conn, "r")
    await node.publish("r", "before")
    await settle()
    node.hub.deliver(BusMessage("r", 2, node.bus._epoch, b"\xc1 not an envelope"))
    node.hub.deliver(BusMessage("r", 3, node.bus._epoch, envelope.pack(envelope.Envelope(TS_MS, SENDER, "text", "after"))))
    await settle()
    assert texts(conn) == ["before", "after"] and seqs(conn, "r") == [1, 3]


# --- rooms and membership ---------------------------------------------------------------------

async def test_rooms_are_isolated():
    node = Node()
    in_a, in_b = fake_connection(), fake_connection(MSGPACK)
    await node.join(in_a, "a")
    await node.join(in_b, "b")
    await node.publish("a", "for a")
    await node.publish("b", "for b")
    await node.publish("c", "for nobody")
    await settle()
    assert texts(in_a) == ["for a"] and texts(in_b) == ["for b"]
    assert node.bus.subscribed_rooms == {"a", "b"}


async def test_a_member_of_several_rooms_gets_each_rooms_stream_in_order():
    node = Node()
    both, only_a = fake_connection(), fake_connection()
    await node.join(both, "a")
    await node.join(both, "b")
    await node.join(only_a, "a")
    for i in range(5):
        await node.publish("a", f"a{i}")
        await node.publish("b", f"b{i}")
    await settle()
    assert texts(both) == [f"{room}{i}" for i in range(5) for room in "ab"]
    assert seqs(both, "a") == seqs(both, "b") == [1, 2, 3, 4, 5]
    assert texts(only_a) == [f"a{i}" for i in range(5)]


async def test_leave_stops_delivery_and_the_last_leave_unsubscribes():
    node = Node()
    stays, goes = fake_connection(), fake_connection()
    await node.join(stays, "r")
    await node.join(goes, "r")
    await node.publish("r", "both")
    await settle()
    node.hub.leave(goes, "r")
    await node.publish("r", "one")
    await settle()
    assert texts(stays) == ["both", "one"] and texts(goes) == ["both"]
    assert goes.rooms == set() and node.bus.unsubscribes == []
    node.hub.leave(stays, "r")
    assert node.bus.unsubscribes == ["r"] and node.bus.subscribed_rooms == frozenset() and node.hub.rooms == {}
    assert node.metrics.registry.get_sample_value("ringcast_rooms_hosted") == 0
    await node.publish("r", "nobody")
    await settle()
    assert texts(stays) == ["both", "one"]


async def test_a_message_published_between_a_leave_and_its_delivery_is_not_delivered():
    node = Node()
    conn = fake_connection()
    await node.join(conn, "r")
    await node.join(fake_connection(), "r")  # keeps the room subscribed
    await node.publish("r", "in flight")  # delivered next turn
    node.hub.leave(conn, "r")
    await settle()
    assert texts(conn) == []


async def test_joins_of_a_new_room_share_one_subscribe_and_wait_until_it_is_live():
    node = Node()
    node.bus.subscribe_gate = asyncio.Event()
    first, second = fake_connection(), fake_connection()
    joins = [asyncio.ensure_future(node.join(conn, "r")) for conn in (first, second)]
    await settle()
    assert not any(join.done() for join in joins)
    node.bus.subscribe_gate.set()
    await asyncio.gather(*joins)
    await node.publish("r", "hello")
    await settle()
    assert node.bus.subscribes == ["r"]
    assert texts(first) == texts(second) == ["hello"]


async def test_a_connection_closed_while_the_subscribe_is_pending_is_not_joined():
    node = Node()
    node.bus.subscribe_gate = asyncio.Event()
    conn = fake_connection()
    join = asyncio.ensure_future(node.join(conn, "r"))
    await settle()
    node.disconnect(conn)
    node.bus.subscribe_gate.set()
    with pytest.raises(ConnectionError):
        await join
    assert node.hub.rooms == {} and node.bus.unsubscribes == ["r"]


async def test_a_join_whose_history_read_fails_leaves_nothing_behind():
    node = Node()
    node.bus.history_down = True
    conn = fake_connection()
    with pytest.raises(BusUnavailable):
        await node.join(conn, "r")
    assert conn.rooms == set() and node.hub.rooms == {} and node.bus.subscribed_rooms == frozenset()


# --- the seam between history and the live stream (join buffer) -------------------------------

async def test_messages_arriving_during_the_history_read_follow_the_history_in_order():
    node = Node()
    member, joiner = fake_connection(), fake_connection(MSGPACK)
    await node.join(member, "r")
    for i in range(1, 4):
        await node.publish("r", f"m{i}")
    await settle()
    node.bus.history_gate = asyncio.Event()
    join = asyncio.ensure_future(node.join(joiner, "r", since=(1, node.bus._epoch)))
    await node.publish("r", "m4")  # in the joiner's history snapshot, and buffered when delivered live
    await settle()  # snapshot taken (seq 4: m2..m4), the answer is held
    assert len(node.hub.rooms["r"].recovering[joiner]) == 1  # m4 came live during the read
    for i in range(5, 8):
        await node.publish("r", f"m{i}")
    await settle()
    assert received(joiner) == []  # nothing before `joined`
    node.bus.history_gate.set()
    joined = await join
    await node.publish("r", "m8")
    await settle()
    assert joined["seq"] == 4
    assert [f["type"] for f in received(joiner)][0] == "joined"
    assert texts(joiner) == [f"m{i}" for i in range(2, 9)]  # history m2..m4, buffered m5..m7, live m8
    assert seqs(joiner, "r") == list(range(2, 9))
    assert texts(member) == [f"m{i}" for i in range(1, 9)]


async def test_a_join_buffer_filled_to_its_bound_is_delivered_whole():
    node = Node(max_join_buffer_messages=3)
    member, joiner = fake_connection(), fake_connection()
    await node.join(member, "r")
    node.bus.history_gate = asyncio.Event()
    join = asyncio.ensure_future(node.join(joiner, "r"))
    await settle()
    for i in range(3):
        await node.publish("r", f"m{i}")
    await settle()
    assert not joiner.closed
    node.bus.history_gate.set()
    await join
    await settle()
    assert [f["type"] for f in received(joiner)] == ["joined", "message", "message", "message"]
    assert texts(joiner) == texts(member) == ["m0", "m1", "m2"]


async def test_one_message_past_the_join_buffer_bound_cuts_the_joiner_and_its_buffer_is_dropped():
    node = Node(max_join_buffer_messages=3)
    member, joiner = fake_connection(), fake_connection()
    await node.join(member, "r")
    node.bus.history_gate = asyncio.Event()
    join = asyncio.ensure_future(node.join(joiner, "r"))
    await settle()
    for i in range(10):
        await node.publish("r", f"m{i}")
    await settle()
    assert joiner.closed and joiner.close_reason == "join_buffer_overflow" and joiner.transport.aborted
    assert joiner not in node.hub.rooms["r"].recovering  # its buffer is freed at the cut, not at go_live
    node.bus.history_gate.set()
    await join
    await settle()
    assert received(joiner) == [] and joiner.transport.writes_after_close == 0
    assert node.hub.rooms["r"].members == {member}  # go_live found no buffer: the cut joiner never became a member
    assert texts(member) == [f"m{i}" for i in range(10)]


async def test_a_joiner_that_leaves_during_its_history_read_gets_nothing():
    node = Node()
    member, joiner = fake_connection(), fake_connection()
    await node.join(member, "r")
    node.bus.history_gate = asyncio.Event()
    join = asyncio.ensure_future(node.join(joiner, "r"))
    await settle()
    await node.publish("r", "m1")
    await settle()
    node.disconnect(joiner)
    node.bus.history_gate.set()
    await join
    await node.publish("r", "m2")
    await settle()
    assert received(joiner) == [] and joiner.rooms == set()
    assert texts(member) == ["m1", "m2"] and node.hub.rooms["r"].members == {member}


async def test_a_message_already_in_the_joiners_position_is_not_delivered_live_again():
    node = Node()
    member, resumer, fresh = fake_connection(), fake_connection(), fake_connection()
    await node.join(member, "r")
    await settle()
    await node.publish("r", "m1")  # its live delivery is still queued when the joins read the room
    resumed = await node.join(resumer, "r", since=(0, ""))
    joined = await node.join(fresh, "r")
    await settle()
    assert resumed["seq"] == joined["seq"] == 1
    assert texts(member) == ["m1"]
    assert seqs(resumer, "r") == [1]  # from its history page, once
    assert seqs(fresh, "r") == []  # the live stream starts after joined.seq


# --- filling the gap of a bus outage -----------------------------------------------------------

async def lose_deliveries(node: Node, room: str, *texts_: str) -> None:
    """Publish while the worker's subscription is gone: kept in history, never delivered live."""
    node.bus.set_handlers(lambda message: None)
    for text in texts_:
        await node.publish(room, text)
    await settle()
    node.bus.set_handlers(node.hub.deliver)


async def test_after_a_bus_outage_members_get_the_missed_messages_then_the_held_live_ones():
    node = Node()
    conn = fake_connection()
    await node.join(conn, "r")
    await node.publish("r", "m1")
    await settle()
    await lose_deliveries(node, "r", "m2", "m3")
    node.bus.history_gate = asyncio.Event()
    fill = asyncio.ensure_future(node.hub.fill_gaps(limit=100))
    await settle()  # the fill holds live messages and reads history after seq 1 (m2, m3)
    await node.publish("r", "m4")  # live, not in the snapshot: held
    await settle()
    node.hub.deliver(BusMessage("r", 3, node.bus._epoch, envelope.pack(envelope.Envelope(TS_MS, SENDER, "text", "m3"))))
    assert texts(conn) == ["m1"]
    node.bus.history_gate.set()
    await fill
    await node.publish("r", "m5")
    await settle()
    assert texts(conn) == ["m1", "m2", "m3", "m4", "m5"] and seqs(conn, "r") == [1, 2, 3, 4, 5]
    assert node.metrics.registry.get_sample_value("ringcast_gap_filled_messages_total") == 2


async def test_a_failed_gap_fill_still_releases_the_held_live_messages():
    node = Node()
    conn = fake_connection()
    await node.join(conn, "r")
    await lose_deliveries(node, "r", "m1")
    node.bus.history_down = True
    node.bus.history_gate = asyncio.Event()
    fill = asyncio.ensure_future(node.hub.fill_gaps(limit=100))
    await node.publish("r", "m2")
    await fill
    await settle()
    assert texts(conn) == ["m2"]  # m1 is lost (a jump in seq), but the stream goes on


async def test_a_live_message_in_the_same_turn_as_the_reconnect_does_not_hide_the_gap():
    node = Node()
    conn = fake_connection()
    await node.join(conn, "r")
    await node.publish("r", "m1")
    await settle()
    await lose_deliveries(node, "r", "m2", "m3")
    # What the worker does on on_state(True), then the next reply of the same socket read:
    fill = asyncio.ensure_future(node.hub.fill_gaps(limit=100))
    position = await node.publish("r", "m4")
    node.hub.deliver(BusMessage("r", position.seq, position.epoch,
                                envelope.pack(envelope.Envelope(TS_MS, SENDER, "text", "m4"))))
    await fill
    await settle()
    assert seqs(conn, "r") == [1, 2, 3, 4]


# --- slow consumers ---------------------------------------------------------------------------

async def test_a_slow_member_is_cut_and_the_others_keep_receiving():
    node = Node(max_outbound_bytes=2_000)
    slow, fast = fake_connection(reading=False), fake_connection()
    await node.join(slow, "r")
    await node.join(fast, "r")
    for i in range(100):
        await node.publish("r", f"{i:03d}" + "x" * 50)
        await settle()
    assert [conn for conn, _ in node.overflowed] == [slow]
    assert slow.closed and slow.transport.aborted and slow.pending == []
    assert slow.transport.buffered_bytes <= 2_000 + 200  # the bound plus the one write that crossed it
    assert len(texts(fast)) == 100


# --- a property: every member gets exactly its rooms' messages while it is a member ---------------

ROOMS = ("a", "b", "c")
operations = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 3), st.sampled_from(ROOMS)),
        st.tuples(st.just("leave"), st.integers(0, 3), st.sampled_from(ROOMS)),
        st.tuples(st.just("publish"), st.integers(1, 3), st.sampled_from(ROOMS)),
    ),
    max_size=40,
)


async def run_against_model(ops: list[tuple[str, int, str]]) -> None:
    node = Node()
    conns = [fake_connection(JSON if i % 2 else MSGPACK) for i in range(4)]
    expected: list[list[tuple[str, str]]] = [[] for _ in conns]
    counter = 0
    for kind, arg, room in ops:
        if kind == "join":
            conn = conns[arg]
            if room not in conn.rooms:
                await node.join(conn, room)
        elif kind == "leave":
            node.hub.leave(conns[arg], room)
        else:
            for _ in range(arg):
                counter += 1
                await node.publish(room, f"{room}{counter}")
        await settle()  # the model: a member receives what is published while it is one
        if kind == "publish":
            for index, conn in enumerate(conns):
                if room in conn.rooms:
                    expected[index].extend((room, f"{room}{n}") for n in range(counter - arg + 1, counter + 1))
    await settle()
    for index, conn in enumerate(conns):
        got = [(f["room"], f["text"]) for f in received(conn) if f["type"] == "message"]
        assert got == expected[index], index
        for room in ROOMS:  # per room, positions only go up
            positions = seqs(conn, room)
            assert positions == sorted(set(positions))
    hosted = {room for conn in conns for room in conn.rooms}
    assert set(node.hub.rooms) == hosted and node.bus.subscribed_rooms == hosted


@hsettings(max_examples=150, deadline=None)
@given(operations)
def test_members_receive_exactly_the_messages_of_their_rooms_while_members(ops):
    asyncio.run(run_against_model(ops))
