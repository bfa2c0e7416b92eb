"""The backend helper (router/backend.py) against real workers, a real router and a real Redis.

It publishes, broadcasts and reads history over the HTTP API; its retries are
safe (one idempotency key per call, kept across attempts: a publish whose
first attempt hit a frozen Redis is delivered once); the server's refusals
come back as BackendError with the server's code; unreachable servers end in
BackendUnavailable after bounded attempts. The WebSocket SDK's keyed publish
(router/client.py) is retried the same way.
"""

from __future__ import annotations

import asyncio

import pytest

from chaos.cluster import MetricMissing, free_port
from chaos.eventually import eventually
from router.backend import CONNECTION_FAILED, Backend, BackendError, BackendUnavailable
from router.backoff import BackoffPolicy
from router.client import Client
from tests.wsclient import WsClient

SECRET = "backend-helper-key-0123456789abcdefghij"
FAST = BackoffPolicy(base_s=0.1, factor=2.0, cap_s=0.5, jitter=0.3)


@pytest.fixture
def api_node(start_node, monkeypatch):
    monkeypatch.setenv("RINGCAST_API_KEYS", f"helper={SECRET}")
    return start_node


async def test_publish_broadcast_and_history_through_the_router(api_node, start_router):
    node = api_node(2, "--history-size", "10")
    router = start_router("--nodes", ",".join(f"127.0.0.1:{port}" for port in node.ports))
    member = await WsClient.connect(node.ws_url(1))
    try:
        await member.join("lobby")
        async with Backend(router.url(), SECRET, backoff=FAST) as backend:
            first = await backend.publish("lobby", text="hello")
            assert (first["seq"], first["duplicate"]) == (1, False)
            again = await backend.publish("lobby", data={"v": 1}, idempotency_key="k-1")
            retried = await backend.publish("lobby", data={"v": 1}, idempotency_key="k-1")
            assert retried == {**again, "duplicate": True} and again["seq"] == 2
            results = await backend.broadcast(["lobby", "other"], text="all")
            assert [(r["room"], r["seq"]) for r in results] == [("lobby", 3), ("other", 1)]
            page = await backend.history("lobby", limit=10)
            assert [m.get("text", m.get("data")) for m in page["messages"]] == ["hello", {"v": 1}, "all"]
            page = await backend.history("lobby", since=(2, first["epoch"]))
            assert [m["seq"] for m in page["messages"]] == [3] and page["complete"]
            assert backend.retries == 0
        got = [await member.expect("message") for _ in range(3)]
        assert [(m["seq"], m["from"]) for m in got] == [(1, "api:helper"), (2, "api:helper"), (3, "api:helper")]
    finally:
        await member.close()


async def test_refusals_carry_the_servers_code_and_are_not_retried(api_node):
    node = api_node(1)
    async with Backend(node.http_url(0, ""), "w" * 40, backoff=FAST) as wrong:
        with pytest.raises(BackendError) as refused:
            await wrong.publish("lobby", text="x")
        assert (refused.value.code, refused.value.status, wrong.retries) == ("API_KEY_INVALID", 401, 0)
    async with Backend(node.http_url(0, ""), SECRET, backoff=FAST) as backend:
        with pytest.raises(BackendError) as refused:
            await backend.publish("bad room", text="x")
        assert refused.value.code == "INVALID_ROOM"
        with pytest.raises(ValueError):
            await backend.publish("lobby")  # neither data nor text


async def test_presence_through_the_helper(api_node):
    node = api_node(1, "--presence-rule", "chat:*")
    member = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("chat:7")
        async with Backend(node.http_url(0, ""), SECRET, backoff=FAST) as backend:
            async def members() -> list[str]:
                return [m["conn"] for m in (await backend.presence("chat:7"))["members"]]

            await eventually(members, equals=[member.welcome["connectionId"]], what="the member in chat:7")
            with pytest.raises(BackendError) as refused:
                await backend.presence("lobby")
            assert (refused.value.code, refused.value.status) == ("PRESENCE_DISABLED", 404)
    finally:
        await member.close()


async def test_an_unreachable_server_ends_after_bounded_attempts():
    async with Backend(f"http://127.0.0.1:{free_port()}", SECRET, attempts=3, backoff=FAST) as backend:
        with pytest.raises(BackendUnavailable) as failed:
            await backend.publish("lobby", text="x")
    assert failed.value.code == CONNECTION_FAILED and backend.retries == 2


async def test_a_publish_retried_across_a_frozen_redis_is_delivered_once(api_node, redis_server):
    node = api_node(1, "--bus-timeout-s", "0.5", "--history-size", "10")
    member = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("lobby")
        async with Backend(node.http_url(0, ""), SECRET, attempts=50, deadline_s=60, backoff=FAST) as backend:
            redis_server.pause()
            try:
                publish = asyncio.create_task(backend.publish("lobby", text="once"))
                await eventually(lambda: backend.retries >= 1, what="a first attempt failed on the frozen Redis")
            finally:
                redis_server.resume()
            answer = await publish
            marker = await backend.publish("lobby", text="marker")
        assert marker["seq"] == answer["seq"] + 1  # the retry added nothing to the room's stream
        texts = []
        while "marker" not in texts:
            texts.append((await member.expect("message", timeout_s=15))["text"])
        assert texts == ["once", "marker"]
    finally:
        await member.close()


async def test_the_sdk_retries_a_keyed_publish_across_a_frozen_redis_and_it_is_delivered_once(api_node, redis_server):
    """router.client.Client.publish(retry=True): PUBLISH_UNCONFIRMED/BUS_UNAVAILABLE are retried with one key."""
    node = api_node(1, "--bus-timeout-s", "0.5", "--history-size", "10")
    member = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("lobby")
        async with Client(node.http_url(0, ""), backoff=FAST, request_timeout_s=30) as client:
            await client.join("lobby")
            first = await client.publish("lobby", "keyed", idempotency_key="sdk-1")
            again = await client.publish("lobby", "keyed", idempotency_key="sdk-1")
            assert again["seq"] == first["seq"] and again["duplicate"] and "duplicate" not in first

            redis_server.pause()
            try:
                publish = asyncio.create_task(client.publish("lobby", "once", retry=True, attempts=20))
                await eventually(lambda: publish_failed_once(node), what="a first try failed on the frozen Redis")
            finally:
                redis_server.resume()
            answer = await publish
            marker = await client.publish("lobby", "marker")
        assert marker["seq"] == answer["seq"] + 1
        texts = []
        while "marker" not in texts:
            texts.append((await member.expect("message", timeout_s=15))["text"])
        assert texts == ["keyed", "once", "marker"]
    finally:
        await member.close()


def publish_failed_once(node) -> bool:
    """Whether the worker answered a publish with PUBLISH_UNCONFIRMED or BUS_UNAVAILABLE (its error counter)."""
    total = 0.0
    for code in ("PUBLISH_UNCONFIRMED", "BUS_UNAVAILABLE"):
        try:
            total += node.metric(0, "ringcast_errors_total", f'code="{code}"')
        except MetricMissing:
            pass
    return total >= 1


async def test_a_router_whose_worker_is_down_answers_worker_unreachable_and_the_helper_retries_it(start_router):
    router = start_router("--nodes", f"127.0.0.1:{free_port()}", "--api-max-body-bytes", "2048")
    async with Backend(router.url(), SECRET, attempts=2, backoff=FAST) as backend:
        with pytest.raises(BackendUnavailable) as failed:
            await backend.publish("lobby", text="x")
        assert (failed.value.code, failed.value.status, backend.retries) == ("WORKER_UNREACHABLE", 503, 1)
        with pytest.raises(BackendError) as refused:
            await backend.publish("lobby", text="x" * 3000)
        assert (refused.value.code, refused.value.status) == ("BODY_TOO_LARGE", 413)
