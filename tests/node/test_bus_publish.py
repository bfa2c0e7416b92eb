"""The publish path (issue 12): several publishes in flight, answered in order, and their failure rules.

On a real redis-server: RedisBus writes a turn's publishes as one batch of
EVALSHAs on its own connection and matches Redis's replies in order; a
caller's publishes take positions in the order it made them; a script cache
flushed by an operator (NOSCRIPT) or a connection Redis closed costs the
publishes it touched, and the next ones go through a new connection; a frozen
Redis answers every written publish PublishUnconfirmed. Then a WebSocket
connection of a real worker with several publishes in flight: every ack and
error in the order of its frames, and a frozen Redis answering all of them
PUBLISH_UNCONFIRMED (they were all written before the first timed out).
"""

from __future__ import annotations

import asyncio
from unittest.mock import ANY

import redis.asyncio as redis_async

from chaos.eventually import eventually
from node.bus import BusUnavailable, PublishUnconfirmed
from node.bus_redis import PUBLISH_SCRIPT, RedisBus, publish_script
from tests.node.test_idempotency import redis_bus, started
from tests.wsclient import WsClient

FAST_BUS = ("--bus-timeout-s", "1", "--bus-reconnect-base-s", "0.05", "--bus-reconnect-cap-s", "0.5")


async def test_publishes_started_together_take_positions_in_call_order(redis_server):
    bus = redis_bus(redis_server)
    delivered = await started(bus, rooms=("lobby", "kitchen"))
    try:
        futures = [
            bus.publish_nowait("lobby" if n % 3 else "kitchen", b"m%d" % n, f"k{n}" if n % 5 == 0 else None)
            for n in range(120)
        ]
        positions = await asyncio.gather(*futures)
        lobby = [p.seq for n, p in enumerate(positions) if n % 3]
        kitchen = [p.seq for n, p in enumerate(positions) if not n % 3]
        assert lobby == list(range(1, len(lobby) + 1))
        assert kitchen == list(range(1, len(kitchen) + 1))
        await eventually(lambda: len(delivered), equals=120, what="every publish delivered")
        assert [m.body for m in delivered if m.room == "lobby"] == [b"m%d" % n for n in range(120) if n % 3]
    finally:
        await bus.close()


async def test_a_flushed_script_cache_fails_the_publishes_it_touched_and_the_next_go_through(redis_server):
    bus = redis_bus(redis_server)
    await started(bus, rooms=("lobby",))
    try:
        assert (await bus.publish("lobby", b"before")).seq == 1
        redis_server.command("SCRIPT", "FLUSH")  # an operator's doing: the loaded script is gone
        refused = await asyncio.gather(*(bus.publish_nowait("lobby", b"x") for _ in range(3)), return_exceptions=True)
        assert all(type(r) is BusUnavailable and "NOSCRIPT" in str(r) for r in refused), refused  # nothing published
        assert (await bus.publish("lobby", b"after")).seq == 2  # a new connection loaded the script again
    finally:
        await bus.close()


async def test_a_connection_closed_by_redis_is_replaced_by_the_next_publish(redis_server):
    bus = redis_bus(redis_server)
    await started(bus, rooms=("lobby",))
    try:
        assert (await bus.publish("lobby", b"one")).seq == 1
        redis_server.command("CLIENT", "KILL", "TYPE", "normal")  # the publish connection (and redis-py's)
        await eventually(lambda: bus._publisher is None, equals=True, what="the loss seen")
        assert (await bus.publish("lobby", b"two")).seq == 2
    finally:
        await bus.close()


async def test_a_frozen_redis_leaves_every_written_publish_unconfirmed_then_refuses_new_ones(redis_server):
    bus = redis_bus(redis_server)
    await started(bus, rooms=("lobby",))
    try:
        assert (await bus.publish("lobby", b"one")).seq == 1
        redis_server.pause()  # SIGSTOP
        try:
            written = await asyncio.gather(*(bus.publish_nowait("lobby", b"x") for _ in range(5)), return_exceptions=True)
            assert all(type(r) is PublishUnconfirmed for r in written), written
            # The connection was dropped; a new one cannot finish its handshake with a frozen Redis.
            with_no_connection = await asyncio.gather(bus.publish_nowait("lobby", b"y"), return_exceptions=True)
            assert type(with_no_connection[0]) is BusUnavailable, with_no_connection
        finally:
            redis_server.resume()
        position = await bus.publish("lobby", b"thawed")
        assert position.seq >= 2  # the written ones may have run on SIGCONT
    finally:
        await bus.close()


def test_the_publish_script_names_its_publish_command_for_subclasses():
    assert PUBLISH_SCRIPT == publish_script("PUBLISH")
    assert "redis.call('SPUBLISH', channel," in publish_script("SPUBLISH")
    assert RedisBus.publish_command == "PUBLISH"


async def test_a_connections_replies_keep_the_order_of_its_frames_with_publishes_in_flight(start_node):
    node = start_node(1)
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.join("a")
        await client.join("b")
        frames = []
        for n in range(60):
            if n == 30:
                frames.append({"type": "message", "room": "nowhere", "text": "refused", "id": f"r{n}"})  # NOT_JOINED
            elif n == 45:
                frames.append({"type": "ping", "id": f"r{n}"})
            else:
                frames.append({"type": "message", "room": "ab"[n % 2], "text": f"t{n}", "id": f"r{n}"})
        for frame in frames:
            await client.send(frame)
        replies = []
        while len(replies) < len(frames):
            reply = await client.expect_any(("ack", "error", "pong"), timeout_s=15)
            replies.append(reply)
        assert [r.get("id") for r in replies] == [f"r{n}" for n in range(60)]
        assert replies[30]["type"] == "error" and replies[30]["code"] == "NOT_JOINED"
        assert replies[45]["type"] == "pong"
        acks = [r for r in replies if r["type"] == "ack"]
        for room in "ab":
            assert [r["seq"] for r in acks if r["room"] == room] == list(range(1, 30))
    finally:
        await client.close()


async def test_publishes_in_flight_when_redis_freezes_are_all_answered_unconfirmed_in_order(start_node, redis_server):
    node = start_node(1, *FAST_BUS)
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.join("frozen")
        await client.send({"type": "message", "room": "frozen", "text": "warm", "id": "w"})
        assert (await client.expect("ack"))["seq"] == 1
        redis_server.pause()  # SIGSTOP: what is written stays in the socket buffer
        try:
            for n in range(3):
                await client.send({"type": "message", "room": "frozen", "text": f"f{n}", "id": f"f{n}"})
            answers = [await client.expect_any(("ack", "error"), timeout_s=15) for _ in range(3)]
        finally:
            redis_server.resume()
        # All three were written to Redis before the first one's deadline: none can be called unavailable.
        assert [(a["id"], a.get("code")) for a in answers] == [(f"f{n}", "PUBLISH_UNCONFIRMED") for n in range(3)]
    finally:
        await client.close()


async def test_the_script_runs_publishes_given_as_another_client_sends_them(redis_server):
    """The KEYS and ARGV documented above the script, as node/bus_cluster.py's pipeline sends them."""
    bus = redis_bus(redis_server)
    delivered = await started(bus, rooms=("lobby",))
    client = redis_async.Redis.from_url(redis_server.url)
    try:
        keys = [bus.state_key("lobby"), bus.history_key("lobby")]
        plain = [2, bus.channel("lobby"), b"plain", 300, 100, 300, 300]
        assert await client.eval(bus.publish_script, 2, *keys, 1, *plain) == [1, ANY, 0]
        keyed = [3, bus.channel("lobby"), b"keyed", 300, 100, 300, 300]
        idempotency_key = bus.keys.idempotency_key("lobby", "k1")
        both = await client.eval(bus.publish_script, 5, *keys, idempotency_key, *keys, 2, *keyed, *plain)
        assert both[::3] == [2, 3] and both[2::3] == [0, 0]
        again = await client.eval(bus.publish_script, 3, *keys, idempotency_key, 1, *keyed)
        assert again == [2, ANY, 1]  # the key: a duplicate of the first
        await eventually(lambda: [(m.seq, m.body) for m in delivered],
                         equals=[(1, b"plain"), (2, b"keyed"), (3, b"plain")], what="each delivered once")
    finally:
        await client.aclose()
        await bus.close()
