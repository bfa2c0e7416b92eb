"""Join/leave events (node/presence_events.py): the sans-I/O coalescer, and presence_diff across real workers."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.eventually import eventually
from node.presence_events import DiffCoalescer, diff_frame, parse_remote, remote_payload
from tests.wsclient import WsClient


def member(conn: str) -> dict:
    return {"user": f"u-{conn}", "conn": conn, "info": None, "worker": "w"}


# --- the coalescer --------------------------------------------------------------------------

def test_churn_within_one_window_is_told_as_where_each_connection_ended_up():
    coalescer = DiffCoalescer()
    coalescer.joined("r", member("a"))
    coalescer.left("r", member("a"))  # joined and left: someone may have read `presence` in between
    coalescer.left("r", member("b"))  # b was there before the window
    coalescer.joined("r", member("b"))  # and came back: someone may have read it absent
    coalescer.joined("r", member("c"))
    diffs = coalescer.drain()
    assert [(d.room, d.joined, d.left) for d in diffs] == [("r", [member("b"), member("c")], [member("a")])]
    assert coalescer.drain() == []


def test_a_leave_reports_the_member_as_it_joined():
    coalescer = DiffCoalescer()
    coalescer.joined("r", member("a"))
    assert coalescer.drain()[0].joined == [member("a")]
    coalescer.left("r", member("a"))
    (diff,) = coalescer.drain()
    assert (diff.joined, diff.left) == ([], [member("a")])


def test_a_diff_past_the_bound_carries_counts_only():
    coalescer = DiffCoalescer()
    for i in range(5):
        coalescer.joined("r", member(str(i)))
    (diff,) = coalescer.drain()
    listed = diff_frame(diff, max_entries=5)
    assert (len(listed["joined"]), listed["joinedCount"], listed["truncated"]) == (5, 5, False)
    counted = diff_frame(diff, max_entries=4)
    assert (counted["joined"], counted["left"], counted["joinedCount"], counted["truncated"]) == ([], [], 5, True)


def test_remote_payloads_skip_our_own_and_malformed_ones():
    frame = diff_frame(_one_diff(), 10)
    assert parse_remote(remote_payload("other", frame), "me") == frame
    assert parse_remote(remote_payload("me", frame), "me") is None
    assert parse_remote(b"not json", "me") is None
    assert parse_remote(b'{"instance":"x","frame":{"type":"message","room":"r"}}', "me") is None


def _one_diff():
    coalescer = DiffCoalescer()
    coalescer.joined("r", member("a"))
    return coalescer.drain()[0]


# Valid histories: a connection joins only when absent and leaves only when present (the session guarantees it).
operations = st.lists(
    st.tuples(st.sampled_from(["r1", "r2"]), st.sampled_from(["a", "b", "c", "d"]), st.booleans()), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(st.integers(0, 80), max_size=10), st.sets(st.tuples(st.sampled_from(["r1", "r2"]), st.sampled_from(["a", "b", "c", "d"]))),
       st.integers(0, 80))
def test_a_member_that_reads_the_membership_at_any_point_ends_with_the_final_one(ops, drain_points, initial, read_at):
    """A member reads `presence` (the store, written at once) after op `read_at`, then applies every later diff."""
    coalescer = DiffCoalescer()
    present = set(initial)  # the membership when the coalescer starts (earlier windows already told)
    from_start = set(initial)  # a member that applies every diff
    seen: set | None = set(initial) if read_at == 0 else None  # a member that read the store mid-way
    for index, (room, conn, toggle) in enumerate(ops):
        if index in drain_points:
            diffs = coalescer.drain()
            apply(from_start, diffs)
            if seen is not None:
                apply(seen, diffs)
        key = (room, conn)
        if key in present and toggle:
            present.discard(key)
            coalescer.left(room, member(conn))
        elif key not in present:
            present.add(key)
            coalescer.joined(room, member(conn))
        if index + 1 == read_at:
            seen = set(present)  # mid-window: the diff of this window is drained after the read
    diffs = coalescer.drain()
    apply(from_start, diffs)
    if seen is not None:
        apply(seen, diffs)
    assert from_start == present
    assert seen is None or seen == present


def apply(seen: set, diffs) -> None:
    """A client's roster: `left` and `joined` are set updates (a connection is in one list at most)."""
    for diff in diffs:
        assert not {m["conn"] for m in diff.left} & {m["conn"] for m in diff.joined}
        for m in diff.left:
            seen.discard((diff.room, m["conn"]))
        for m in diff.joined:
            seen.add((diff.room, m["conn"]))


# --- real workers -----------------------------------------------------------------------------

EVENTS = ("--presence-rule", "chat:*", "--presence-events-rule", "chat:*", "--presence-events-interval-ms", "200",
          "--placement-hint", "off")


async def diffs_until(client: WsClient, done, timeout_s: float = 10.0) -> list[dict]:
    """presence_diff frames until `done(frames)` holds."""
    got: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done(got):
        left = deadline - asyncio.get_running_loop().time()
        got.append(await client.expect("presence_diff", timeout_s=max(0.01, left)))
    return got


async def test_a_member_on_one_worker_hears_a_join_and_a_leave_on_another(start_node):
    node = start_node(2, *EVENTS)
    listener = await WsClient.connect(node.ws_url(0))
    try:
        await listener.join("chat:1")
        me = listener.welcome["connectionId"]
        await diffs_until(listener, lambda got: any(m["conn"] == me for f in got for m in f["joined"]))
        visitor = await WsClient.connect(node.ws_url(1))
        them = visitor.welcome["connectionId"]
        await visitor.join("chat:1")
        joined = await diffs_until(listener, lambda got: any(m["conn"] == them for f in got for m in f["joined"]))
        assert joined[-1]["room"] == "chat:1" and joined[-1]["joined"][0]["worker"] == visitor.welcome["workerId"]
        await visitor.close()
        await diffs_until(listener, lambda got: any(m["conn"] == them for f in got for m in f["left"]))
        # The events never enter the room's stream: the room's seq is still 0.
        history = await _history(listener, "chat:1")
        assert history["seq"] == 0 and history["messages"] == []
    finally:
        await listener.close()


async def _history(client: WsClient, room: str) -> dict:
    await client.send({"type": "history", "id": "h", "room": room})
    return await client.expect("history")


async def test_a_join_leave_storm_within_a_window_becomes_a_few_frames(start_node):
    node = start_node(2, *EVENTS, "--presence-events-interval-ms", "2000", "--message-burst", "1000")
    listener = await WsClient.connect(node.ws_url(0))
    churner = await WsClient.connect(node.ws_url(1))
    try:
        await listener.join("chat:storm")
        me = listener.welcome["connectionId"]
        await diffs_until(listener, lambda got: any(m["conn"] == me for f in got for m in f["joined"]))
        listener.seen.clear()
        for _ in range(200):
            await churner.send({"type": "join", "room": "chat:storm"})
            await churner.send({"type": "leave", "room": "chat:storm"})
        for _ in range(200):
            await churner.expect("left")
        # A marker after the storm: the storm is over once the listener hears of the marker's join.
        marker = await WsClient.connect(node.ws_url(1))
        await marker.join("chat:storm")
        mid = marker.welcome["connectionId"]
        got = await diffs_until(listener, lambda got: any(m["conn"] == mid for f in got for m in f["joined"]))
        await marker.close()
        # 400 joins and leaves: at most a frame per window from each worker while it lasted, never one per event.
        assert len(got) <= 10, [(len(f["joined"]), len(f["left"])) for f in got]
    finally:
        await listener.close()
        await churner.close()


async def test_diffs_stay_local_on_a_memory_node(start_node):
    node = start_node(1, *EVENTS, bus="memory")
    a = await WsClient.connect(node.ws_url(0))
    b = await WsClient.connect(node.ws_url(0))
    try:
        await a.join("chat:m")
        await b.join("chat:m")
        bid = b.welcome["connectionId"]
        await eventually(lambda: _heard_join(a, bid), what="a hears b's join", timeout_s=10)
    finally:
        await a.close()
        await b.close()


async def _heard_join(client: WsClient, conn: str) -> bool:
    frame = await client.expect("presence_diff", timeout_s=1)
    return any(m["conn"] == conn for m in frame["joined"])



async def _lists(client: WsClient, room: str, conn: str) -> bool:
    await client.send({"type": "presence", "room": room, "id": "p"})
    answer = await client.expect("presence")
    return any(m["conn"] == conn for m in answer["members"])


@pytest.mark.parametrize("carol_worker", [0, 1])
async def test_a_member_that_read_presence_hears_a_leave_in_the_window_of_the_join(start_node, carol_worker):
    # A long window: carol's join and her leave fall within one window of her worker (a worker that
    # cancelled them out told nobody of the leave, while the member had read her in `presence`).
    node = start_node(2, *EVENTS, "--presence-events-interval-ms", "3000")
    back = await WsClient.connect(node.ws_url(0))  # a member back from a lost connection
    carol = await WsClient.connect(node.ws_url(carol_worker))
    cid = carol.welcome["connectionId"]
    try:
        await back.join("chat:away")
        await carol.join("chat:away")
        # The member reads who is there after its (re)join, as a client must, and applies diffs from then on.
        await eventually(lambda: _lists(back, "chat:away", cid), what="carol listed by presence", timeout_s=10)
        await carol.close()
        await diffs_until(back, lambda got: any(m["conn"] == cid for f in got for m in f["left"]), timeout_s=15)
    finally:
        await back.close()
