"""A node started alone (no control plane ring, no --nodes) routes among its own workers, and
everything it hands clients is its public URL; real supervisor, workers and redis-server.

Every worker computes the lone-node ring of its siblings from its settings; the test checks
that they agree with each other and with what each worker says of itself (its heartbeat).
"""

from __future__ import annotations

import json

from chaos.cluster import http_json
from chaos.eventually import eventually
from router.membership import ring_key
from router.ring import Member, Ring
from tests.router.helpers import room_owned_by
from tests.wsclient import WsClient

TEMPLATE = "wss://edge.example.test/w/{node_id}-{index}"


def lone_ring(ports: list[int]) -> Ring:
    """The ring the test expects of node edge-a advertised at 127.0.0.1 with TEMPLATE."""
    return Ring([Member(f"edge-a:{port}", f"wss://edge.example.test/w/edge-a-{index}", 1, f"127.0.0.1:{port}")
                 for index, port in enumerate(ports)], 0)


def heartbeat_of(redis_server, worker_id: str) -> dict | None:
    raw = redis_server.command("HGET", "ringcast:nodes:heartbeat", worker_id).strip()
    return json.loads(raw) if raw else None


async def test_a_lone_node_routes_among_its_workers_by_their_public_urls(redis_server, start_node):
    node = start_node(2, "--advertise-host", "127.0.0.1", "--node-id", "edge-a", "--public-url", TEMPLATE,
                      "--control-heartbeat-interval-s", "0.2")
    expected = lone_ring(node.ports)

    # Both workers hold the same ring: the node's two workers, with ids, public URLs and addresses.
    for index in range(2):
        status, body = http_json(node.http_url(index, "/ring"))
        assert (status, body) == (200, expected.to_dict())

    # /route on either worker names the owner's public URL, for rooms of both workers.
    for owner_index, owner_port in enumerate(node.ports):
        room = room_owned_by(expected, f"edge-a:{owner_port}")
        for index in range(2):
            status, body = http_json(node.http_url(index, f"/route?room={room}"))
            assert (status, body) == (200, {"room": room, "node": f"edge-a:{owner_port}",
                                            "url": f"wss://edge.example.test/w/edge-a-{owner_index}", "epoch": 0})

    # Each worker says the same of itself: its welcome names its id, its heartbeat its URL and address.
    for index, port in enumerate(node.ports):
        client = await WsClient.connect(node.ws_url(index))
        await client.close()
        assert client.welcome["workerId"] == f"edge-a:{port}"
        beat = await eventually(lambda: heartbeat_of(redis_server, f"edge-a:{port}"),
                                what=f"worker {index}'s heartbeat in Redis")
        assert (beat["id"], beat["url"], beat["address"]) == (
            f"edge-a:{port}", f"wss://edge.example.test/w/edge-a-{index}", f"127.0.0.1:{port}")

    # The supervisor's log names each worker's id and public URL.
    for index, port in enumerate(node.ports):
        assert f"started worker {index} (edge-a:{port} at wss://edge.example.test/w/edge-a-{index})" in node.log()

    # A join on the wrong sibling is served and hinted towards the owner's public URL.
    room = room_owned_by(expected, f"edge-a:{node.ports[1]}")
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.send({"type": "join", "room": room})
        frames = [await client.recv(), await client.recv()]
        assert [f["type"] for f in frames] == ["joined", "moved"]
        assert frames[1] == {"type": "moved", "room": room, "url": "wss://edge.example.test/w/edge-a-1", "epoch": 0}
    finally:
        await client.close()


async def test_a_published_ring_replaces_the_lone_node_ring_and_it_returns_when_the_ring_goes(redis_server, start_node):
    node = start_node(2, "--node-id", "edge-b", "--advertise-host", "127.0.0.1")
    lone = {"epoch": 0, "members": [
        {"id": f"edge-b:{port}", "url": f"ws://127.0.0.1:{port}/ws", "weight": 1, "address": f"127.0.0.1:{port}"}
        for port in node.ports
    ]}
    assert http_json(node.http_url(0, "/ring")) == (200, lone)

    published = Ring([Member("elsewhere:9000", "wss://other.example.test/ws", 1, "10.0.0.9:9000")], 4)
    redis_server.command("SET", ring_key("ringcast:"), published.to_json())
    for index in range(2):
        await eventually(lambda: http_json(node.http_url(index, "/ring"))[1], equals=published.to_dict(),
                         what=f"worker {index} to follow the published ring")
    status, body = http_json(node.http_url(1, "/route?room=lobby"))
    assert (status, body["url"], body["epoch"]) == (200, "wss://other.example.test/ws", 4)

    redis_server.command("DEL", ring_key("ringcast:"))
    for index in range(2):
        await eventually(lambda: http_json(node.http_url(index, "/ring"))[1], equals=lone,
                         what=f"worker {index} back on the lone-node ring")
