"""Subscription lifecycle, checked from Redis itself (PUBSUB CHANNELS / NUMSUB, CLIENT LIST).

A worker subscribes to a room's channel when its first local member joins,
unsubscribes when the last one leaves or disconnects, carries all its rooms
on one pub/sub connection, and never subscribes to anything else.
"""

from __future__ import annotations

from chaos.eventually import eventually
from tests.node.redis_view import channels, numpat, numsub, room_channels, subscriber_connections
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
        # A wrong UNSUBSCRIBE for a0's leave would be on worker 0's pub/sub connection before `left`.
        # b0's join of a new room sends a SUBSCRIBE on that same connection and is answered only once
        # Redis confirmed it, that is after Redis processed everything sent before it: NUMSUB is final now.
        await b0.join("after-a0-left")
        assert await numsub(redis_server, "alpha") == 2  # b0 still holds worker 0's subscription
        await c1.send({"type": "message", "room": "alpha", "text": "b0 still here"})
        assert (await b0.expect("message"))["text"] == "b0 still here"  # and worker 0 still delivers alpha

        await c1.send({"type": "leave", "room": "alpha"})
        await c1.expect("left")
        # Worker 1 wrote its UNSUBSCRIBE before `left`; Redis reads it on another connection than redis-cli's.
        await eventually(lambda: numsub(redis_server, "alpha"), equals=1, what="worker 1 unsubscribed from alpha")

        await b0.close()  # worker 0's last member disconnects without leaving
        await eventually(lambda: channels(redis_server), equals=set(), what="no channel subscribed")
        await eventually(lambda: subscriber_connections(redis_server), equals=0, what="no subscribed connection")
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
        await eventually(lambda: channels(redis_server), equals=room_channels("r3", "r4"), what="r1 and r2 dropped")
        await eventually(lambda: numsub(redis_server, "r3"), equals=1, what="worker 0 unsubscribed from r3")
        await eventually(lambda: subscriber_connections(redis_server), equals=1, what="worker 0 subscribed to nothing")
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
            await eventually(lambda: numsub(redis_server, "again"), equals=0, what="unsubscribed from again")
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
        await eventually(lambda: channels(redis_server), equals=set(), what="no channel subscribed")
        for i in (0, 1):
            await eventually(lambda: node.metric(i, "ringcast_rooms_hosted"), equals=0, what=f"worker {i} hosts none")
    finally:
        for client in clients:
            await client.close()
