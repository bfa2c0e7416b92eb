"""`ringcast router`: /route, /ring, the 400 and 503 answers, CORS, following the published ring."""

from __future__ import annotations

import urllib.request

from chaos.cluster import http_json
from chaos.eventually import eventually_blocking
from router.membership import ring_key
from router.ring import Member, Ring

STATIC = "127.0.0.1:9101,127.0.0.1:9102@2"


def test_route_answers_room_node_url_epoch_from_a_static_list(start_router):
    router = start_router("--nodes", STATIC)
    status, body = http_json(router.url("/route?room=lobby"))
    assert status == 200
    expected = Ring([Member("127.0.0.1:9101", "ws://127.0.0.1:9101/ws"),
                     Member("127.0.0.1:9102", "ws://127.0.0.1:9102/ws", 2)], 0).route("lobby")
    assert body == {"room": "lobby", "node": expected.id, "url": expected.url, "epoch": 0}
    # Room names with reserved URL characters arrive intact when percent-encoded.
    status, body = http_json(router.url("/route?room=chat%2Bteam%23general"))
    assert status == 200 and body["room"] == "chat+team#general"


def test_ring_lists_members_weights_and_epoch(start_router):
    router = start_router("--nodes", STATIC)
    status, body = http_json(router.url("/ring"))
    assert status == 200
    assert body == {"epoch": 0, "members": [
        {"id": "127.0.0.1:9101", "url": "ws://127.0.0.1:9101/ws", "weight": 1, "address": "127.0.0.1:9101"},
        {"id": "127.0.0.1:9102", "url": "ws://127.0.0.1:9102/ws", "weight": 2, "address": "127.0.0.1:9102"},
    ]}


def test_invalid_room_is_400_with_a_code(start_router):
    router = start_router("--nodes", STATIC)
    for query in ("", "?room=", "?room=has%20space", "?room=" + "x" * 129):
        status, body = http_json(router.url("/route" + query))
        assert status == 400 and body["error"] == "INVALID_ROOM", (query, body)


def test_cors_headers_and_preflight(start_router):
    router = start_router("--nodes", STATIC)
    with urllib.request.urlopen(router.url("/route?room=a"), timeout=2) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    request = urllib.request.Request(router.url("/route?room=a"), method="OPTIONS",
                                     headers={"Origin": "http://example.com", "Access-Control-Request-Method": "GET"})
    with urllib.request.urlopen(request, timeout=2) as response:
        assert response.status == 204
        assert "GET" in response.headers["Access-Control-Allow-Methods"]


def test_503_without_live_members_then_follows_the_published_ring(redis_server, start_router):
    router = start_router("--redis", redis_server.url, "--ring-poll-interval-s", "0.1")

    def answer_with(wanted: int) -> tuple[int, dict] | None:
        answer = http_json(router.url("/route?room=lobby"))
        return answer if answer[0] == wanted else None

    status, body = http_json(router.url("/route?room=lobby"))
    assert status == 503 and body["error"] == "NO_LIVE_WORKER" and body["message"]

    ring = Ring([Member("w1", "ws://127.0.0.1:9201/ws"), Member("w2", "ws://127.0.0.1:9202/ws")], 4)
    redis_server.command("SET", ring_key("ringcast:"), ring.to_json())
    status, body = eventually_blocking(lambda: answer_with(200), what="the router to follow the published ring")
    assert body["epoch"] == 4 and body["node"] == ring.owner_id("lobby")

    # Every worker dead: the control plane publishes an empty ring.
    redis_server.command("SET", ring_key("ringcast:"), Ring([], 5).to_json())
    status, body = eventually_blocking(lambda: answer_with(503), what="the router to see the empty ring")
    assert body["error"] == "NO_LIVE_WORKER" and body["epoch"] == 5
