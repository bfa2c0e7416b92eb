"""Workers and the ring: every worker answers /route, and a join on the wrong worker is
served and followed by a `moved` hint (or not, with placement_hint=off); without a control plane
ring or --nodes, the ring is the node's own workers."""

from __future__ import annotations

from chaos.cluster import http_json
from router.ring import Member, Ring
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


async def test_without_any_ring_a_node_routes_among_its_own_workers(start_node):
    # No control plane ring, no --nodes: the ring is the node's own workers (tests/node/test_lone_node.py
    # has the public URL template and the switch to a published ring).
    node = start_node(2)
    lone = Ring([Member(f"127.0.0.1:{p}", f"ws://127.0.0.1:{p}/ws", 1, f"127.0.0.1:{p}") for p in node.ports], 0)
    room = room_owned_by(lone, f"127.0.0.1:{node.ports[1]}")
    for index in range(2):
        status, body = http_json(node.http_url(index, f"/route?room={room}"))
        assert (status, body) == (200, {"room": room, "node": f"127.0.0.1:{node.ports[1]}",
                                        "url": f"ws://127.0.0.1:{node.ports[1]}/ws", "epoch": 0})
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.send({"type": "join", "room": room})
        frames = [await client.recv(), await client.recv()]
        assert [f["type"] for f in frames] == ["joined", "moved"]
        assert frames[1] == {"type": "moved", "room": room, "url": f"ws://127.0.0.1:{node.ports[1]}/ws", "epoch": 0}
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
