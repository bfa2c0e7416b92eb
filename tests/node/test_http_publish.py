"""The HTTP API for backends (node/http_api.py, router/api_forward.py) on real workers and a real router.

A backend publishes with an API key, without a WebSocket and without knowing
placement: an HTTP publish on one worker reaches the room's members on every
worker, directly and through the route service. Keys are checked (401 without
a valid one, API_DISABLED when none is configured) and never appear in a
process's argv; bodies are validated with documented codes; a broadcast
answers each room; history reads back what was published; presence is read
from any worker. docs/openapi-api.yaml lists exactly the routes served.
"""

from __future__ import annotations

import aiohttp
import psutil
import pytest
from aiohttp import web

from chaos.cluster import REPO
from chaos.eventually import eventually
from node import http_api
from node.bus_memory import MemoryBus
from node.config import NodeConfig
from node.http_api import HttpApi
from node.metrics import NodeMetrics
from router import api_forward
from router.api_forward import ApiForwarder
from router.ring import Ring
from tests.wsclient import WsClient

SECRET = "s3cret-backend-key-0123456789abcdefgh"
OLD_SECRET = "old-backend-key-0123456789abcdefghijkl"
KEYS = f"backend={SECRET},old={OLD_SECRET}"


def auth(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def call(method: str, url: str, body: object = None, headers: dict | None = None,
               raw: bytes | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        kwargs = {"data": raw} if raw is not None else ({"json": body} if body is not None else {})
        async with session.request(method, url, headers=headers or {}, **kwargs) as response:
            return response.status, await response.json(content_type=None)


@pytest.fixture
def api_node(start_node, monkeypatch):
    """A 2-worker node with two API keys, given by the environment (never in argv)."""
    monkeypatch.setenv("RINGCAST_API_KEYS", KEYS)

    def start(*args: str, bus: str = "redis"):
        return start_node(2 if bus != "memory" else 1, "--history-size", "10", *args, bus=bus)
    return start


async def test_an_http_publish_reaches_members_on_every_worker_directly_and_through_the_router(
        api_node, start_router):
    node = api_node()
    router = start_router("--nodes", ",".join(f"127.0.0.1:{port}" for port in node.ports))
    members = [await WsClient.connect(node.ws_url(0)), await WsClient.connect(node.ws_url(1))]
    try:
        for member in members:
            await member.join("lobby")
        status, answer = await call("POST", node.http_url(1, "/v1/publish"),
                                    {"room": "lobby", "text": "from the backend"}, auth())
        assert status == 200, answer
        assert answer == {"room": "lobby", "seq": 1, "epoch": answer["epoch"], "duplicate": False}
        for member in members:
            got = await member.expect("message")
            assert (got["seq"], got["text"], got["from"]) == (1, "from the backend", "api:backend")

        # through the route service, with the old key of a rotation
        status, answer = await call("POST", router.url("/v1/publish"),
                                    {"room": "lobby", "data": {"n": 2}, "idempotency_key": "n-2"}, auth(OLD_SECRET))
        assert status == 200 and answer["seq"] == 2 and not answer["duplicate"], answer
        status, again = await call("POST", router.url("/v1/publish"),
                                   {"room": "lobby", "data": {"n": 2}, "idempotency_key": "n-2"}, auth(OLD_SECRET))
        assert (status, again) == (200, {**answer, "duplicate": True})
        for member in members:
            got = await member.expect("message")
            assert (got["seq"], got["data"], got["from"]) == (2, {"n": 2}, "api:old")

        status, page = await call("GET", router.url("/v1/rooms/lobby/history?limit=10"), headers=auth())
        assert status == 200, page
        assert [m["seq"] for m in page["messages"]] == [1, 2] and page["complete"] and page["seq"] == 2
        status, page = await call("GET", node.http_url(0, "/v1/rooms/lobby/history?since_seq=1&epoch="
                                                          + answer["epoch"]), headers=auth())
        assert [m["data"] for m in page["messages"]] == [{"n": 2}] and page["complete"]

        # a retry published nothing: the next message is seq 3 on both members
        await call("POST", node.http_url(0, "/v1/publish"), {"room": "lobby", "text": "3"}, auth())
        for member in members:
            assert (await member.expect("message"))["seq"] == 3

        for process in [psutil.Process(node.proc.pid), *psutil.Process(node.proc.pid).children()]:
            assert SECRET not in " ".join(process.cmdline())
    finally:
        for member in members:
            await member.close()


async def test_a_wrong_or_missing_key_gets_401_and_no_key_configured_gets_api_disabled(
        api_node, start_node, start_router, monkeypatch):
    node = api_node()
    router = start_router("--nodes", f"127.0.0.1:{node.port}")
    body = {"room": "lobby", "text": "x"}
    for url in (node.http_url(0, "/v1/publish"), router.url("/v1/publish")):
        status, answer = await call("POST", url, body)
        assert (status, answer["error"]) == (401, "API_KEY_REQUIRED")
        status, answer = await call("POST", url, body, auth("x" * 40))
        assert (status, answer["error"]) == (401, "API_KEY_INVALID")
        status, answer = await call("POST", url, body, {"Authorization": f"Basic {SECRET}"})
        assert (status, answer["error"]) == (401, "API_KEY_REQUIRED")
        assert SECRET not in str(answer)
    status, answer = await call("GET", node.http_url(0, "/v1/rooms/lobby/history"), headers=auth("x" * 40))
    assert (status, answer["error"]) == (401, "API_KEY_INVALID")

    monkeypatch.delenv("RINGCAST_API_KEYS")
    bare = start_node(1)
    status, answer = await call("POST", bare.http_url(0, "/v1/publish"), body, auth())
    assert (status, answer["error"]) == (403, "API_DISABLED")


async def test_bad_bodies_get_their_codes(api_node):
    node = api_node("--max-message-bytes", "1000", "--max-frame-bytes", "4096", "--api-max-broadcast-rooms", "3")
    url = node.http_url(0, "/v1/publish")
    cases = [
        (b"not json", 400, "INVALID_JSON"),
        (b"[1, 2]", 400, "INVALID_JSON"),
        (b'{"text": "no room"}', 400, "INVALID_ROOM"),
        (b'{"room": "bad room", "text": "x"}', 400, "INVALID_ROOM"),
        (b'{"room": "r"}', 400, "INVALID_MESSAGE_FORMAT"),
        (b'{"room": "r", "text": "x", "data": 1}', 400, "INVALID_MESSAGE_FORMAT"),
        (b'{"room": "r", "text": 5}', 400, "INVALID_MESSAGE_FORMAT"),
        (b'{"room": "r", "text": "x", "idempotency_key": "has space"}', 400, "INVALID_MESSAGE_FORMAT"),
        (b'{"room": "r", "data": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "INVALID_MESSAGE_FORMAT"),
        (b'{"room": "r", "text": "' + b"x" * 2000 + b'"}', 413, "MESSAGE_TOO_LARGE"),
        (b'{"room": "r", "text": "' + b"x" * 5000 + b'"}', 413, "BODY_TOO_LARGE"),
    ]
    for raw, status, code in cases:
        got_status, answer = await call("POST", url, headers=auth(), raw=raw)
        assert (got_status, answer.get("error")) == (status, code), raw[:60]
    broadcast = node.http_url(0, "/v1/broadcast")
    status, answer = await call("POST", broadcast, {"rooms": ["a", "b", "c", "d"], "text": "x"}, auth())
    assert (status, answer["error"]) == (400, "TOO_MANY_ROOMS")
    status, answer = await call("POST", broadcast, {"rooms": "a", "text": "x"}, auth())
    assert (status, answer["error"]) == (400, "INVALID_MESSAGE_FORMAT")
    status, answer = await call("GET", node.http_url(0, "/v1/rooms/r/history?limit=0"), headers=auth())
    assert (status, answer["error"]) == (400, "INVALID_MESSAGE_FORMAT")


async def test_a_broadcast_answers_each_room_and_reaches_members_on_every_worker(api_node, start_router):
    node = api_node()
    router = start_router("--nodes", ",".join(f"127.0.0.1:{port}" for port in node.ports))
    rooms = ["news", "sports", "weather"]
    members = [await WsClient.connect(node.ws_url(i)) for i in range(2)]
    try:
        for member in members:
            for room in rooms:
                await member.join(room)
        body = {"rooms": rooms, "text": "bulletin", "idempotency_key": "b-1"}
        status, answer = await call("POST", router.url("/v1/broadcast"), body, auth())
        assert status == 200, answer
        assert [(r["room"], r["seq"], r["duplicate"]) for r in answer["results"]] == [(room, 1, False) for room in rooms]
        status, again = await call("POST", node.http_url(1, "/v1/broadcast"), body, auth())
        assert [(r["room"], r["seq"], r["duplicate"]) for r in again["results"]] == [(room, 1, True) for room in rooms]
        for member in members:
            got = sorted([(m["room"], m["seq"]) for m in [await member.expect("message") for _ in rooms]])
            assert got == [(room, 1) for room in sorted(rooms)]
        await call("POST", node.http_url(0, "/v1/publish"), {"room": "news", "text": "after"}, auth())
        for member in members:
            assert (await member.expect("message"))["seq"] == 2  # the retried broadcast delivered nothing
    finally:
        for member in members:
            await member.close()


async def test_the_memory_bus_serves_the_api_too(api_node):
    node = api_node(bus="memory")
    member = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("solo")
        body = {"room": "solo", "text": "x", "idempotency_key": "one"}
        first = await call("POST", node.http_url(0, "/v1/publish"), body, auth())
        again = await call("POST", node.http_url(0, "/v1/publish"), body, auth())
        assert first[0] == 200 and again == (200, {**first[1], "duplicate": True})
        assert (await member.expect("message"))["text"] == "x"
    finally:
        await member.close()


async def test_presence_is_read_over_the_api_from_any_worker_and_the_router(api_node, start_router):
    node = api_node("--presence-rule", "chat:*")
    router = start_router("--nodes", ",".join(f"127.0.0.1:{port}" for port in node.ports))
    member = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("chat:1")

        async def count(url: str) -> int:
            status, answer = await call("GET", url, headers=auth())
            assert status == 200, answer
            return answer["count"]

        for url in (node.http_url(1, "/v1/rooms/chat:1/presence"), router.url("/v1/rooms/chat:1/presence")):
            await eventually(lambda: count(url), equals=1, what=f"the member listed by {url}")
        status, answer = await call("GET", node.http_url(0, "/v1/rooms/lobby/presence"), headers=auth())
        assert (status, answer["error"]) == (404, "PRESENCE_DISABLED")
        status, answer = await call("GET", node.http_url(0, "/v1/rooms/chat:1/presence"), headers=auth("y" * 40))
        assert (status, answer["error"]) == (401, "API_KEY_INVALID")
    finally:
        await member.close()


def openapi_routes(text: str) -> set[tuple[str, str]]:
    """(METHOD, path) of the `paths:` section of an OpenAPI YAML file, read by indentation (no YAML library here)."""
    routes, path, inside = set(), None, False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            inside = line.startswith("paths:")
        elif inside and indent == 2:
            path = line.strip().rstrip(":")
        elif inside and indent == 4 and line.strip().rstrip(":") in ("get", "post", "put", "delete", "patch"):
            routes.add((line.strip().rstrip(":").upper(), path))
    return routes


def registered_routes(add_routes) -> set[tuple[str, str]]:
    app = web.Application()
    add_routes(app)
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}


def test_the_openapi_file_lists_exactly_the_routes_of_the_workers_and_the_router():
    spec = (REPO / "docs" / "openapi-api.yaml").read_text()
    documented = openapi_routes(spec)
    assert ("POST", "/v1/publish") in documented  # the reader works
    config = NodeConfig(api_key=[f"k={SECRET}"])
    worker = registered_routes(HttpApi(config, MemoryBus(), NodeMetrics("w"), presence=lambda room: None).add_routes)
    router = registered_routes(ApiForwarder(lambda: Ring(), 1024, 1.0).add_routes)
    assert worker == documented
    assert router == documented
    prose = (REPO / "docs" / "api.md").read_text()
    codes = set(http_api.ERRORS) | {api_forward.WORKER_UNREACHABLE, api_forward.NO_LIVE_WORKER}
    assert {code for code in codes if f"`{code}`" not in prose or code not in spec} == set()
