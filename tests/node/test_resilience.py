"""Faults around a running node: Redis restarted or frozen, graceful shutdown, a worker SIGKILLed.

Real redis-server, real supervisor and workers. Nothing here asserts a
duration: each test waits (with a generous timeout) for the state it expects.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import psutil
import pytest

from chaos.cluster import http_json
from chaos.eventually import eventually
from tests.node.redis_view import channels, numsub, room_channels
from tests.wsclient import WsClient

FAST_BUS = ("--bus-timeout-s", "1", "--bus-reconnect-base-s", "0.05", "--bus-reconnect-cap-s", "0.5")


# A publish on a connection Redis dropped cannot tell "never ran" from "ran, reply lost":
# the worker says PUBLISH_UNCONFIRMED then; once it cannot even connect, BUS_UNAVAILABLE.
BUS_DOWN_CODES = ("BUS_UNAVAILABLE", "PUBLISH_UNCONFIRMED")


async def publish_answer(client: WsClient, room: str, text: str, request_id: str) -> dict:
    """Publish with an id; the ack or the error that answers it."""
    await client.send({"type": "message", "room": room, "text": text, "id": request_id})
    while True:
        frame = await client.expect_any(("ack", "error"), timeout_s=15)
        if frame.get("id") == request_id:
            return frame


async def publish_until_acked(client: WsClient, room: str, text: str, timeout_s: float = 20.0) -> dict:
    """Retry a publish (as a client would after BUS_UNAVAILABLE) until the bus takes it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        answer = await publish_answer(client, room, text, f"{text}-{attempt}")
        if answer["type"] == "ack":
            return answer
        assert answer["code"] in BUS_DOWN_CODES, answer
        assert loop.time() < deadline, "the bus never came back"
        await asyncio.sleep(0.1)


async def expect_text(client: WsClient, text: str) -> dict:
    """The next `message` frame carrying `text` (earlier ones are skipped)."""
    while True:
        frame = await client.expect("message", timeout_s=15)
        if frame.get("text") == text:
            return frame


def worker_pids(node) -> list[int]:
    return [node.worker_pid(i) for i in range(node.workers)]


# --- Redis restarted -----------------------------------------------------------------------

async def test_redis_restarted_mid_run(start_node, redis_server):
    node = start_node(2, *FAST_BUS)
    pids = worker_pids(node)
    a0 = await WsClient.connect(node.ws_url(0))
    b1 = await WsClient.connect(node.ws_url(1), codec="msgpack")
    c1 = await WsClient.connect(node.ws_url(1))
    try:
        for client in (a0, b1):
            await client.join("alpha")
            await client.join("beta")
        await c1.join("gamma")
        assert await channels(redis_server) == room_channels("alpha", "beta", "gamma")

        await asyncio.to_thread(redis_server.stop)
        # During the outage: a publish is answered with BUS_UNAVAILABLE, not left hanging.
        down = await publish_answer(a0, "alpha", "lost", "during-outage")
        assert down["code"] in BUS_DOWN_CODES and down["id"] == "during-outage"
        await a0.send({"type": "join", "room": "delta", "id": "j"})
        refused_join = await a0.expect_any(("joined", "error"), 15)
        assert (refused_join["type"], refused_join["code"]) == ("error", "BUS_UNAVAILABLE")
        # gamma's only member leaves during the outage: it must not be re-subscribed.
        await c1.send({"type": "leave", "room": "gamma"})
        await c1.expect("left")
        await eventually(lambda: node.metric(0, "ringcast_bus_connected"), equals=0, what="worker 0 saw the bus go")

        await asyncio.to_thread(redis_server.start)  # same port, empty
        await eventually(lambda: numsub(redis_server, "alpha"), equals=2, timeout_s=20, what="alpha re-subscribed")
        await eventually(lambda: numsub(redis_server, "beta"), equals=2, timeout_s=20, what="beta re-subscribed")
        assert await channels(redis_server) == room_channels("alpha", "beta")  # no gamma, no delta

        # Delivery resumes in both directions, across workers.
        await publish_until_acked(a0, "alpha", "from-0")
        assert (await expect_text(b1, "from-0"))["room"] == "alpha"
        await publish_until_acked(b1, "beta", "from-1")
        assert (await expect_text(a0, "from-1"))["room"] == "beta"

        for index in (0, 1):
            # Set when Redis answers the PING sent after the re-SUBSCRIBE, on another connection than ours.
            await eventually(lambda: node.metric(index, "ringcast_bus_connected"), equals=1,
                             what=f"worker {index} reconnected")
            assert node.metric(index, "ringcast_bus_reconnects_total") >= 2  # first connect + after the restart
            assert node.metric(index, "ringcast_worker_restarts") == 0
        assert node.metric(0, "ringcast_errors_total", 'code="BUS_UNAVAILABLE"') + node.metric(
            0, "ringcast_errors_total", 'code="PUBLISH_UNCONFIRMED"') >= 2
        assert worker_pids(node) == pids  # never crashed

        # No subscription leaks after the reconnect: everyone leaves, every channel goes.
        for client in (a0, b1):
            await client.close()
        await eventually(lambda: channels(redis_server), equals=set(), what="no channel subscribed")
    finally:
        for client in (a0, b1, c1):
            await client.close()


async def test_redis_frozen_then_thawed(start_node, redis_server):
    node = start_node(1, *FAST_BUS)
    pid = node.worker_pid(0)
    publisher = await WsClient.connect(node.ws_url(0))
    listener = await WsClient.connect(node.ws_url(0))
    try:
        await publisher.join("frozen")
        await listener.join("frozen")
        redis_server.pause()  # SIGSTOP: sockets stay open, nothing answers
        try:
            answer = await publish_answer(publisher, "frozen", "into-the-void", "p1")
            # It sits in the frozen Redis's socket buffer and may run on SIGCONT: not "unavailable".
            assert answer["code"] == "PUBLISH_UNCONFIRMED"
            await eventually(lambda: node.metric(0, "ringcast_bus_connected"), equals=0, what="the bus seen as lost")
            assert (await publish_answer(publisher, "frozen", "still-frozen", "p2"))["code"] in BUS_DOWN_CODES
        finally:
            redis_server.resume()  # SIGCONT
        await eventually(lambda: node.metric(0, "ringcast_bus_connected"), equals=1, timeout_s=20, what="the bus back")
        await eventually(lambda: numsub(redis_server, "frozen"), equals=1, timeout_s=20, what="frozen re-subscribed")
        await publish_until_acked(publisher, "frozen", "thawed")
        assert (await expect_text(listener, "thawed"))["room"] == "frozen"
        await still_usable(listener)
        assert node.worker_pid(0) == pid
    finally:
        await publisher.close()
        await listener.close()


async def still_usable(client: WsClient) -> None:
    await client.send({"type": "ping", "id": "alive"})
    assert (await client.expect("pong"))["id"] == "alive"


async def test_a_history_read_while_redis_is_frozen_is_answered_bus_unavailable(start_node, redis_server):
    node = start_node(1, *FAST_BUS)
    reader = await WsClient.connect(node.ws_url(0))
    try:
        await reader.join("kept")
        await publish_until_acked(reader, "kept", "before-the-freeze")
        redis_server.pause()  # SIGSTOP: the read reaches Redis's socket and is never answered
        try:
            await reader.send({"type": "history", "room": "kept", "id": "h-frozen"})
            answer = await reader.expect_any(("history", "error"), timeout_s=15)
            assert (answer["type"], answer.get("code"), answer["id"]) == ("error", "BUS_UNAVAILABLE", "h-frozen")
        finally:
            redis_server.resume()
        assert node.metric(0, "ringcast_errors_total", 'code="BUS_UNAVAILABLE"') == 1
        await still_usable(reader)

        async def page_once_redis_answers() -> dict | None:  # a client retries later, as BUS_UNAVAILABLE asks
            await reader.send({"type": "history", "room": "kept", "id": "h-thawed"})
            answer = await reader.expect_any(("history", "error"), timeout_s=15)
            return answer if answer["type"] == "history" else None

        page = await eventually(page_once_redis_answers, timeout_s=20, what="a history page after the thaw")
        assert [m["text"] for m in page["messages"]] == ["before-the-freeze"] and page["complete"] is True
    finally:
        await reader.close()


async def test_a_server_bug_is_answered_internal_error_with_the_request_id_and_the_connection_stays_open(
    start_node, redis_server,
):
    """The one real way in: read_history assumes every entry of a room's history stream is ringcast's own.

    Anyone with access to Redis can XADD an entry without the `b` field; the worker does not expect it, so
    it reaches the worker's handler of unexpected exceptions (the path a client reports as a bug). The
    worker sends INTERNAL_ERROR and never closes with 1011. When read_history learns to skip foreign
    entries, this test needs another trigger.
    """
    node = start_node(1)
    client = await WsClient.connect(node.ws_url(0))
    try:
        await asyncio.to_thread(redis_server.command, "XADD", "ringcast:hist:{tampered}", "1-0", "foreign", "x")
        await client.send({"type": "history", "room": "tampered", "since": {"seq": 0, "epoch": ""}, "id": "h1"})
        error = await client.expect_any(("history", "error"))
        assert (error["type"], error.get("code"), error["id"]) == ("error", "INTERNAL_ERROR", "h1")
        assert f"bug while handling a frame on connection {client.welcome['connectionId']}" in node.log()
        await still_usable(client)

        # A resume reads the same history: the join fails the same way and leaves nothing half-joined.
        await client.send({"type": "join", "room": "tampered", "since": {"seq": 0, "epoch": ""}, "id": "j1"})
        error = await client.expect_any(("joined", "error"))
        assert (error["type"], error.get("code"), error["id"]) == ("error", "INTERNAL_ERROR", "j1")
        await client.send({"type": "leave", "room": "tampered", "id": "l1"})
        assert (await client.expect_any(("left", "error")))["code"] == "NOT_JOINED"
        assert node.metric(0, "ringcast_errors_total", 'code="INTERNAL_ERROR"') == 2
        assert node.metric(0, "ringcast_rooms_hosted") == 0
        await still_usable(client)
    finally:
        await client.close()


# --- graceful shutdown -----------------------------------------------------------------------

async def test_graceful_shutdown_steers_clients_away_and_exits_0(start_node):
    node = start_node(1, "--shutdown-window-s", "3", "--reconnect-jitter-ms", "500")
    clients = [await WsClient.connect(node.ws_url(0), codec=codec) for codec in ("json", "msgpack", "json")]
    for client in clients:
        await client.join("leaving")
    assert http_json(node.http_url(0, "/readyz"))[0] == 200
    stopping = asyncio.ensure_future(asyncio.to_thread(node.stop))  # SIGTERM to the supervisor, then wait
    try:
        async def readyz() -> int:
            return (await asyncio.to_thread(http_json, node.http_url(0, "/readyz")))[0]

        await eventually(readyz, equals=503, what="/readyz 503 while shutting down")  # yet still answering
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(node.ws_url(0))
            assert info.value.status == 503

        for client in clients:
            notice = await client.expect("reconnect", timeout_s=15)
            assert notice["reason"] == "shutdown" and 0 <= notice["delayMs"] <= 500 and "url" not in notice
            msg = await client.ws.receive(timeout=15)
            # The close frame the worker sent (the client's own close_code may read 1006 if its
            # reply finds the worker already gone: the handshake is the client's business then).
            assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1001, "shutdown")
        assert await asyncio.wait_for(stopping, 30) == 0  # the supervisor's exit status
        assert "worker 0 (pid" in node.log() and ") exited with 0" in node.log()  # and the worker's own
    finally:
        for client in clients:
            await client.close()
        await asyncio.wait_for(stopping, 40)


# --- a worker killed -----------------------------------------------------------------------------

async def test_a_sigkilled_worker_is_restarted_by_the_supervisor(start_node):
    # No `moved` hint (the node's own ring may give "room" to worker 1): the doomed socket's next event is its death.
    node = start_node(2, "--restart-backoff-base-s", "0.1", "--placement-hint", "off")
    victim_pid, survivor_pid = worker_pids(node)
    doomed = await WsClient.connect(node.ws_url(0))
    survivor = await WsClient.connect(node.ws_url(1))
    try:
        await doomed.join("room")
        await survivor.join("room")
        os.kill(victim_pid, signal.SIGKILL)
        with pytest.raises(ConnectionError):
            await doomed.recv(15)  # its socket dies with the process

        def restarted() -> bool:
            try:
                return node.worker_pid(0) != victim_pid and http_json(node.http_url(0, "/readyz"))[0] == 200
            except (LookupError, OSError, psutil.Error):  # psutil.Error: the old one is still a zombie
                return False

        await eventually(restarted, timeout_s=30, what="worker 0 restarted and ready")
        assert not psutil.pid_exists(victim_pid) or psutil.Process(victim_pid).status() == psutil.STATUS_ZOMBIE
        assert node.metric(0, "ringcast_worker_restarts") == 1
        assert f"pid {victim_pid}) died with -9" in node.log()  # the supervisor logs each restart
        assert node.metric(1, "ringcast_worker_restarts") == 0
        assert node.worker_pid(1) == survivor_pid
        await still_usable(survivor)

        # The new worker serves and delivers across workers again.
        back = await WsClient.connect(node.ws_url(0))
        await back.join("room")
        await survivor.send({"type": "message", "room": "room", "text": "welcome back"})
        assert (await expect_text(back, "welcome back"))["room"] == "room"
        await back.close()
    finally:
        await doomed.close()
        await survivor.close()


# --- foreign traffic on a room channel --------------------------------------------------------------

async def test_a_malformed_payload_on_a_room_channel_is_dropped_and_the_subscription_survives(start_node, redis_server):
    node = start_node(1)
    member = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("shared")
        await member.join("other")
        # Counted when Redis answers the PING that follows the first SUBSCRIBEs, not before `joined`.
        await eventually(lambda: node.metric(0, "ringcast_bus_reconnects_total"), equals=1, what="the first connect")
        for garbage in ("garbage", "1 epoch-without-body", "x e body", "1 e \udcff"):
            await asyncio.to_thread(redis_server.command, "PUBLISH", "ringcast:room:shared", garbage)
        await member.send({"type": "message", "room": "other", "text": "after the garbage"})
        assert (await expect_text(member, "after the garbage"))["room"] == "other"
        assert node.metric(0, "ringcast_bus_reconnects_total") == 1  # the pub/sub connection was never dropped
        assert node.metric(0, "ringcast_bus_connected") == 1
        # A well-formed body that is not an envelope is dropped by the hub, also without harm.
        await asyncio.to_thread(redis_server.command, "PUBLISH", "ringcast:room:shared", "7 e1 not-msgpack\xc1")
        await member.send({"type": "message", "room": "shared", "text": "still flowing"})
        assert (await expect_text(member, "still flowing"))["room"] == "shared"
        assert node.metric(0, "ringcast_bus_reconnects_total") == 1
    finally:
        await member.close()
