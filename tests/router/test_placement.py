"""Workers and the ring: every worker answers /route, and a join on the wrong worker is
served and followed by a `moved` hint (or not, with placement_hint=off or without a ring)."""

from __future__ import annotations

from chaos.cluster import http_json
from tests.router.helpers import publish_ring, ring_of, room_owned_by
from tests.router.placement_helpers import node_with_static_ring
from tests.wsclient import WsClient


async def test_join_on_the_wrong_worker_is_served_then_hinted(redis_server, start_node):
    node = start_node(2)
    ring = await publish_ring(redis_server, node, epoch=3)
    owner = node.ports[1]
    room = room_owned_by(ring, f"127.0.0.1:{owner}")

    # Every worker answers /route from its own copy of the ring.
    for index in range(2):
        status, body = http_json(node.http_url(index, f"/route?room={room}"))
        assert (status, body) == (200, {"room": room, "node": f"127.0.0.1:{owner}",
                                        "url": f"ws://127.0.0.1:{owner}/ws", "epoch": 3})

    wrong = await WsClient.connect(node.ws_url(0))
    right = await WsClient.connect(node.ws_url(1))
    try:
        await wrong.send({"type": "join", "room": room})
        frames = [await wrong.recv(), await wrong.recv()]
        assert [f["type"] for f in frames] == ["joined", "moved"]
        assert frames[1] == {"type": "moved", "room": room, "url": f"ws://127.0.0.1:{owner}/ws", "epoch": 3}

        # The owner sends no hint: the next frame after joined answers our ping.
        await right.send({"type": "join", "room": room})
        await right.expect("joined")
        await right.send({"type": "ping", "id": 1})
        assert (await right.recv())["type"] == "pong"

        # Served anyway: a message published on the owner reaches the member on the wrong worker.
        await right.send({"type": "message", "room": room, "text": "still served"})
        delivered = await wrong.expect("message")
        assert delivered["text"] == "still served"
    finally:
        await wrong.close()
        await right.close()


async def test_placement_hint_off_sends_no_moved(redis_server, start_node):
    node = start_node(2, "--placement-hint", "off")
    ring = await publish_ring(redis_server, node, epoch=1)
    room = room_owned_by(ring, f"127.0.0.1:{node.ports[1]}")
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.join(room)
        await client.send({"type": "ping", "id": 7})
        assert (await client.recv())["type"] == "pong"
    finally:
        await client.close()


async def test_without_any_ring_a_worker_serves_without_hints_and_route_is_503(start_node):
    node = start_node(2)
    status, body = http_json(node.http_url(0, "/route?room=lobby"))
    assert status == 503 and body["error"] == "NO_LIVE_WORKER"
    client = await WsClient.connect(node.ws_url(0))
    try:
        for i in range(20):  # about half of these belong to worker 1 in any two-member ring
            await client.join(f"room-{i}")
        await client.send({"type": "ping", "id": 1})
        assert (await client.recv())["type"] == "pong"
        assert not [f for f in client.seen if f.get("type") == "moved"]
    finally:
        await client.close()


async def test_a_static_nodes_list_places_rooms_without_a_control_plane(redis_server):
    with node_with_static_ring(redis_server, workers=2) as node:
        ring = ring_of(node, 0)
        second = f"127.0.0.1:{node.ports[1]}"
        room = room_owned_by(ring, second)
        status, body = http_json(node.http_url(0, f"/route?room={room}"))
        assert status == 200 and body["node"] == second
        client = await WsClient.connect(node.ws_url(0))
        try:
            await client.join(room)
            moved = await client.expect("moved")
            assert moved["url"] == f"ws://{second}/ws" and moved["epoch"] == 0
        finally:
            await client.close()
