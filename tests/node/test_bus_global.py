"""The global-broadcast comparison bus (`--bus global`, node/bus_global.py) on a real Redis and 2 real workers.

It must still deliver across workers and keep history readable, and it must
really be the tutorial's design: one channel for everything, and every worker
receiving (and counting) messages of rooms it does not host.
"""

from __future__ import annotations

import asyncio

from chaos.eventually import eventually
from node.bus import BusMessage
from node.bus_global import GlobalBroadcastBus
from node.bus_redis import RedisBusSettings
from node.bus_wire import encode
from tests.node.redis_view import PREFIX, channels
from tests.wsclient import WsClient

BUS_RECEIVED = "ringcast_bus_messages_received_total"


async def test_every_worker_receives_every_room_on_one_global_channel(start_node, redis_server):
    node = start_node(2, "--history-size", "10", bus="global")
    listener = await WsClient.connect(node.ws_url(1))
    publisher = await WsClient.connect(node.ws_url(0))
    try:
        await listener.join("lobby")
        await publisher.join("lobby")
        await publisher.join("only-on-worker-0")
        await eventually(lambda: channels(redis_server), equals={PREFIX + "__global__"}, what="only the global channel")

        await publisher.send({"type": "message", "room": "lobby", "payload": {"n": 1}})
        got = await listener.expect("message")
        assert got["room"] == "lobby" and got["payload"] == {"n": 1}
        await publisher.expect("message")

        before = node.metric(1, BUS_RECEIVED)  # the lobby message reached worker 1: the listener got it
        for n in range(3):
            await publisher.send({"type": "message", "room": "only-on-worker-0", "payload": {"n": n}})
            assert (await publisher.expect("message"))["payload"] == {"n": n}
        # worker 1 hosts no member of that room, yet every one of its messages reached it
        await eventually(lambda: node.metric(1, BUS_RECEIVED), equals=before + 3,
                         what="worker 1 received the 3 messages of a room it does not host")
        assert await channels(redis_server) == {PREFIX + "__global__"}

        await listener.send({"type": "history", "room": "lobby", "limit": 5})
        page = await listener.expect("history")
        assert [m["payload"] for m in page["messages"]] == [{"n": 1}], page  # the room tag is stripped
    finally:
        await listener.close()
        await publisher.close()


async def test_the_bus_in_process_tags_rooms_on_one_channel_and_drops_untagged_payloads(redis_server):
    """The same bus without workers: what it delivers, what it subscribes, what it refuses."""
    bus = GlobalBroadcastBus(RedisBusSettings(
        url=redis_server.url, channel_prefix=PREFIX, key_prefix="ringcast:", timeout_s=2.0,
        reconnect_base_s=0.05, reconnect_cap_s=0.5, room_state_ttl_s=60,
    ))
    delivered: list[BusMessage] = []
    states: list[bool] = []
    bus.set_handlers(delivered.append, states.append)
    await bus.start()
    try:
        await bus.subscribe("lobby")
        await bus.subscribe("kitchen")
        assert bus.subscribed_rooms == {"lobby", "kitchen"}
        await eventually(lambda: states, equals=[True], what="the global subscription resynced")
        assert await channels(redis_server) == {PREFIX + "__global__"}

        # no room tag, or not the format at all: dropped, and the connection stays
        untagged = encode(1, "1718000000123456", b"no-tag-here").decode()
        for payload in (untagged, "garbage"):
            await asyncio.to_thread(redis_server.command, "PUBLISH", PREFIX + "__global__", payload)
        position = await bus.publish("lobby", b"hello there")
        await eventually(lambda: delivered, equals=[BusMessage("lobby", position.seq, position.epoch, b"hello there")],
                         what="only the well-formed message, room tag stripped")
        bus.unsubscribe("kitchen")
        assert bus.subscribed_rooms == {"lobby"}
        assert await channels(redis_server) == {PREFIX + "__global__"}  # leaving a room sends nothing to Redis
        assert states == [True] and bus.connected
    finally:
        await bus.close()
