"""Subscription lifecycle, checked from Redis itself (PUBSUB CHANNELS / NUMSUB, CLIENT LIST).

A worker subscribes to a room's channel when its first local member joins,
unsubscribes when the last one leaves or disconnects, carries all its rooms
on one pub/sub connection, and never subscribes to anything else.
"""

from __future__ import annotations

from tests.node.redis_view import channels, eventually, numpat, numsub, room_channels, subscriber_connections
from tests.wsclient import WsClient


async def test_a_worker_subscribes_with_its_first_member_and_unsubscribes_with_its_last(start_node, redis_server):
    node = start_node(2)
    a0 = await WsClient.connect(node.ws_url(0))
    b0 = await WsClient.connect(node.ws_url(0))
    c1 = await WsClient.connect(node.ws_url(1))
    try:
        assert await channels(redis_server) == set()  # connected, no room: nothing subscribed
        await a0.join("alpha")
        assert await numsub(redis_server, "alpha") == 1  # `joined` comes after the subscription is live
        await b0.join("alpha")
        assert await numsub(redis_server, "alpha") == 1  # a second local member: no second subscription
        await c1.join("alpha")
        assert await numsub(redis_server, "alpha") == 2  # one per worker hosting the room
        assert await channels(redis_server) == room_channels("alpha")

        await a0.send({"type": "leave", "room": "alpha"})
        await a0.expect("left")
        await c1.send({"type": "ping", "id": "sync"})
        await c1.expect("pong")
        assert await numsub(redis_server, "alpha") == 2  # b0 still holds worker 0's subscription

        await c1.send({"type": "leave", "room": "alpha"})
        await c1.expect("left")
        await eventually(lambda: numsub(redis_server, "alpha"), 1)  # worker 1's last member left

        await b0.close()  # worker 0's last member disconnects without leaving
        await eventually(lambda: channels(redis_server), set())
        await eventually(lambda: subscriber_connections(redis_server), 0)
    finally:
        for client in (a0, b0, c1):
            await client.close()


async def test_only_rooms_with_local_members_are_subscribed_and_one_connection_carries_them(start_node, redis_server):
    node = start_node(2)
    left = await WsClient.connect(node.ws_url(0))
    right = await WsClient.connect(node.ws_url(1))
    try:
        for room in ("r1", "r2", "r3"):
            await left.join(room)
        await right.join("r3")
        await right.join("r4")
        assert await channels(redis_server) == room_channels("r1", "r2", "r3", "r4")
        assert [await numsub(redis_server, r) for r in ("r1", "r2", "r3", "r4")] == [1, 1, 2, 1]
        assert await subscriber_connections(redis_server) == 2  # one pub/sub connection per worker
        assert await numpat(redis_server) == 0  # no pattern (global) subscription either

        # Publishing subscribes nothing new (the publisher has no channel of its own).
        await left.send({"type": "message", "room": "r1", "text": "hello"})
        await right.send({"type": "message", "room": "r4", "text": "hello"})
        await left.expect("message")
        await right.expect("message")
        assert await channels(redis_server) == room_channels("r1", "r2", "r3", "r4")

        await left.close()  # drops r1, r2 entirely and worker 0's share of r3
        await eventually(lambda: channels(redis_server), room_channels("r3", "r4"))
        assert await numsub(redis_server, "r3") == 1
        assert await subscriber_connections(redis_server) == 1
    finally:
        await left.close()
        await right.close()


async def test_rejoining_after_the_last_member_left_subscribes_again(start_node, redis_server):
    node = start_node(1)
    client = await WsClient.connect(node.ws_url(0))
    listener = await WsClient.connect(node.ws_url(0))
    try:
        for _ in range(3):
            await client.join("again")
            assert await numsub(redis_server, "again") == 1
            await client.send({"type": "leave", "room": "again"})
            await client.expect("left")
            await eventually(lambda: numsub(redis_server, "again"), 0)
        # The last re-subscription is live: a message published now is delivered.
        await client.join("again")
        await listener.join("again")
        await client.send({"type": "message", "room": "again", "text": "back"})
        assert (await listener.expect("message"))["text"] == "back"
        assert await numsub(redis_server, "again") == 1
    finally:
        await client.close()
        await listener.close()


async def test_many_connections_joining_and_leaving_leave_no_subscription_behind(start_node, redis_server):
    node = start_node(2)
    clients = [await WsClient.connect(node.ws_url(i % 2)) for i in range(12)]
    try:
        for i, client in enumerate(clients):
            for room in (f"room-{i % 4}", f"room-{(i + 1) % 4}", "shared"):
                await client.send({"type": "join", "room": room})
        for client in clients:
            for _ in range(3):
                await client.expect("joined")
        assert await channels(redis_server) == room_channels("room-0", "room-1", "room-2", "room-3", "shared")
        assert await numsub(redis_server, "shared") == 2
        # Half leave politely, half vanish.
        for i, client in enumerate(clients):
            if i % 2:
                await client.close()
            else:
                for room in (f"room-{i % 4}", f"room-{(i + 1) % 4}", "shared"):
                    await client.send({"type": "leave", "room": room})
        await eventually(lambda: channels(redis_server), set())
        for i in (0, 1):
            assert node.metric(i, "ringcast_rooms_hosted") == 0
    finally:
        for client in clients:
            await client.close()
