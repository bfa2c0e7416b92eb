"""node.ws_server and the worker's upgrade on a real worker process, on both ways in: a connection's first
request (the front door upgrades it) and an upgrade on a connection aiohttp kept alive after `GET /healthz`
(aiohttp's /ws route, the socket taken over from aiohttp). Raw sockets (chaos/rawws.py) show the exact
bytes: what was sent with the upgrade, the order of the replies, the HTTP refusals, the timeouts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os

import aiohttp
import psutil
import pytest

from chaos.eventually import eventually
from chaos.rawws import OP_CLOSE, OP_TEXT, HttpAnswer, RawWebSocket, client_frame, read_http_answer
from tests.wsclient import WsClient

CONNECTIONS = "ringcast_connections"
CLOSED = "ringcast_connections_closed_total"
PATHS = ["first_request", "kept_alive"]  # the front door's upgrade, aiohttp's route after GET /healthz


def request(node, path: str = "/ws", headers: dict[str, str | None] | None = None, method: str = "GET") -> bytes:
    """An upgrade request (a header given as None is left out)."""
    fields: dict[str, str | None] = {
        "Host": f"{node.host}:{node.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    fields.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def open_socket(node, way: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to worker 0; for "kept_alive" one that has already been answered a `GET /healthz`."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    if way == "kept_alive":
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {node.host}:{node.port}\r\n\r\n".encode())
        answer = await asyncio.wait_for(read_http_answer(reader), 10)
        assert answer.status == 200 and json.loads(answer.body)["ok"] is True, answer
        assert answer.headers.get("connection", "").lower() != "close", answer.headers
    return reader, writer


async def upgrade(node, way: str, headers: dict[str, str | None] | None = None, tail: bytes = b"") -> RawWebSocket:
    """Upgrade (writing `tail` in the same write as the request); the 101 is checked, the welcome is read."""
    reader, writer = await open_socket(node, way)
    data = request(node, headers=headers)
    writer.write(data + tail)
    answer = await asyncio.wait_for(read_http_answer(reader), 10)
    assert answer.status == 101, answer
    key = next(line.split(": ", 1)[1] for line in data.decode().split("\r\n") if line.startswith("Sec-WebSocket-Key"))
    expected = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
    assert answer.headers["sec-websocket-accept"] == expected
    ws = RawWebSocket(reader, writer, answer)
    assert (await next_frame(ws))["type"] == "welcome"
    return ws


async def refused(node, way: str, headers: dict[str, str | None] | None = None, raw: bytes | None = None) -> HttpAnswer:
    reader, writer = await open_socket(node, way)
    try:
        writer.write(request(node, headers=headers) if raw is None else raw)
        return await asyncio.wait_for(read_http_answer(reader), 10)
    finally:
        writer.close()


async def next_frame(ws: RawWebSocket, kinds: tuple[str, ...] | None = None) -> dict:
    """The next server text frame (of one of `kinds`, skipping others); a close fails the test."""
    while True:
        opcode, payload = await ws.recv()
        assert opcode != OP_CLOSE, f"closed: {payload!r}"
        if opcode == OP_TEXT:
            frame = json.loads(payload)
            if kinds is None or frame["type"] in kinds:
                return frame


def nothing_logged_as_a_bug(node) -> bool:
    """No traceback nor "bug while ..." line in the node's log (the endpoint and worker log their own bugs so)."""
    log = node.log()
    return "Traceback" not in log and "bug while" not in log


def text(frame: dict) -> bytes:
    return client_frame(OP_TEXT, json.dumps(frame).encode())


async def close_cleanly(ws: RawWebSocket) -> None:
    """Send a close frame, see the worker answer it with the same code, then see the socket end."""
    ws.send(OP_CLOSE, (1000).to_bytes(2, "big"))
    assert await ws.recv_close() == 1000
    assert await ws.at_eof()
    ws.close()


async def round_trip(ws: RawWebSocket, room: str) -> None:
    ws.send_raw(text({"type": "join", "room": room, "id": "j"}))
    assert (await next_frame(ws, ("joined", "error")))["type"] == "joined"
    ws.send_raw(text({"type": "message", "room": room, "text": "hello", "id": "m1"}))
    replies = {}
    for _ in range(2):  # the ack and the message itself, in either order
        reply = await next_frame(ws, ("ack", "message", "error"))
        replies[reply["type"]] = reply
    assert (replies["ack"]["id"], replies["ack"]["room"], replies["ack"]["seq"]) == ("m1", room, 1)
    assert (replies["message"]["text"], replies["message"]["seq"]) == ("hello", 1)


# --- both ways in serve the same connection ------------------------------------------------

@pytest.mark.parametrize("way", PATHS)
async def test_an_upgrade_is_served_on_a_first_request_and_after_a_kept_alive_get(start_node, way):
    node = start_node(1, bus="memory")
    ws = await upgrade(node, way)
    await round_trip(ws, "r")
    assert node.metric(0, CONNECTIONS) == 1
    await close_cleanly(ws)
    await eventually(lambda: node.metric(0, CONNECTIONS), equals=0, what="the connection uncounted")


async def test_aiohttp_upgrades_on_the_connection_it_used_for_healthz(start_node):
    node = start_node(1, bus="memory")
    created, reused = [], []
    trace = aiohttp.TraceConfig()

    async def on_create(session, context, params):
        created.append(params)

    async def on_reuse(session, context, params):
        reused.append(params)

    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as session:
        async with session.get(node.http_url(0, "/healthz")) as response:
            assert response.status == 200 and (await response.json())["ok"] is True
        ws = await session.ws_connect(node.ws_url(0), autoping=True)
        client = WsClient(session, ws, "json")
        try:
            assert (await client.expect("welcome"))["limits"]
            assert (len(created), len(reused)) == (1, 1)  # one TCP connection, kept alive, then upgraded
            assert (await client.join("r"))["room"] == "r"
            await client.send({"type": "message", "room": "r", "text": "hi", "id": 7})
            replies = {}
            for _ in range(2):  # the ack and the message itself, in either order
                reply = await client.expect_any(("ack", "message", "error"))
                replies[reply["type"]] = reply
            assert (replies["ack"]["id"], replies["message"]["text"]) == (7, "hi")
        finally:
            await ws.close()
        assert ws.close_code == 1000
    await eventually(lambda: node.metric(0, CONNECTIONS), equals=0, what="the connection uncounted")


@pytest.mark.parametrize("way", [
    "first_request",
    "kept_alive",
])
async def test_frames_sent_in_the_same_write_as_the_upgrade_are_served_after_the_welcome(start_node, way):
    node = start_node(1, bus="memory")
    ws = await upgrade(node, way, tail=text({"type": "ping", "id": "p"}) + text({"type": "join", "room": "r", "id": "j"}))
    pong = await next_frame(ws)
    assert (pong["type"], pong["id"]) == ("pong", "p")
    joined = await next_frame(ws)
    assert (joined["type"], joined["id"]) == ("joined", "j")
    await close_cleanly(ws)


@pytest.mark.parametrize("way", PATHS)
async def test_a_join_then_20_publishes_in_one_write_are_answered_in_order(start_node, way):
    """The join is awaited (it reads the room's state) while reading pauses: the publishes that came in the
    same write wait for it, so none of them is NOT_JOINED and the acks keep the frames' order."""
    node = start_node(1, bus="memory")
    ws = await upgrade(node, way)
    burst = text({"type": "join", "room": "r", "id": "j"})
    burst += b"".join(text({"type": "message", "room": "r", "text": f"m{i}", "id": i}) for i in range(20))
    ws.send_raw(burst)
    replies = [await next_frame(ws, ("joined", "ack", "error")) for _ in range(21)]
    assert [(reply["type"], reply["id"]) for reply in replies] == [("joined", "j")] + [("ack", i) for i in range(20)]
    assert [reply["seq"] for reply in replies[1:]] == list(range(1, 21))
    await close_cleanly(ws)
    assert nothing_logged_as_a_bug(node)


# --- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("way", PATHS)
async def test_bad_upgrades_get_426_or_400_and_a_worker_that_lives_on(start_node, way):
    node = start_node(1, "--max-http-header-bytes", "2048", bus="memory")
    old = await refused(node, way, {"Sec-WebSocket-Version": "12"})
    assert old.status == 426 and old.headers["sec-websocket-version"] == "13"
    assert json.loads(old.body)["error"] == "BAD_UPGRADE"
    no_key = await refused(node, way, {"Sec-WebSocket-Key": None})
    assert no_key.status == 400 and json.loads(no_key.body)["error"] == "BAD_UPGRADE"
    assert (await refused(node, way, {"X-Big": "a" * 4096})).status == 400  # aiohttp's max_field_size
    assert (await refused(node, way, raw=b"GET /ws?" + b"q" * 4096 + b" HTTP/1.1\r\n\r\n")).status == 400
    not_get = await refused(node, way, raw=request(node, method="POST"))
    assert not_get.status == 405 and json.loads(not_get.body)["error"] == "BAD_UPGRADE"
    http10 = await refused(node, way, raw=request(node).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1))
    assert http10.status == 400 and json.loads(http10.body)["error"] == "BAD_UPGRADE"
    with_body = await refused(node, way, {"Content-Length": "5"}, raw=None)
    assert with_body.status == 400 and json.loads(with_body.body)["error"] == "BAD_UPGRADE"
    assert node.metric(0, "ringcast_connections_opened_total") == 0
    await round_trip(await upgrade(node, way, {"X-Pad": "a" * 2000}), "still-serving")


@pytest.mark.parametrize("way", PATHS)
async def test_an_incomplete_upgrade_head_is_cut_after_the_handshake_timeout(start_node, way):
    node = start_node(1, "--handshake-timeout-s", "1", bus="memory")
    reader, writer = await open_socket(node, way)
    writer.write(request(node)[:-2])  # everything but the blank line's CRLF
    try:
        assert await asyncio.wait_for(reader.read(), 15) == b""  # cut, nothing answered
    finally:
        writer.close()
    assert node.metric(0, "ringcast_connections_opened_total") == 0


async def test_refusals_carry_the_same_status_and_code_on_both_ways_in(start_node):
    node = start_node(1, "--allowed-origins", "https://app.example.com", "--max-connections-per-ip", "1", bus="memory")
    answers = {way: await refused(node, way, {"Origin": "https://evil.test"}) for way in PATHS}
    for way, answer in answers.items():
        assert answer.status == 403, (way, answer)
        assert json.loads(answer.body)["error"] == "ORIGIN_NOT_ALLOWED", (way, answer)
        assert answer.headers["connection"].lower() == "close", (way, answer.headers)
    held = await upgrade(node, "first_request", {"Origin": "https://app.example.com"})
    for way in PATHS:
        answer = await refused(node, way)
        assert answer.status == 429, (way, answer)
        assert json.loads(answer.body)["error"] == "TOO_MANY_CONNECTIONS_FROM_IP", (way, answer)
        assert int(answer.headers["retry-after"]) >= 1 and answer.headers["connection"].lower() == "close"
    await close_cleanly(held)
    await eventually(lambda: node.metric(0, CONNECTIONS), equals=0, what="the held connection uncounted")
    assert node.metric(0, "ringcast_connections_rejected_total", 'reason="ORIGIN_NOT_ALLOWED"') == 2
    assert node.metric(0, "ringcast_connections_rejected_total", 'reason="TOO_MANY_CONNECTIONS_FROM_IP"') == 2


# --- nothing is left behind --------------------------------------------------------------------

def established_on_port(node) -> int:
    """The worker's TCP connections on its WebSocket port that are not closed yet."""
    worker = psutil.Process(node.worker_pid(0))
    return sum(1 for c in worker.net_connections(kind="tcp")
               if c.laddr and c.laddr.port == node.port and c.status != psutil.CONN_LISTEN)


async def test_connections_are_uncounted_and_freed_on_both_ways_in_however_they_end(start_node):
    """Three rounds of 4 connections (a close frame, or the socket just closed; each way in) against a
    per-IP cap of 4: a connection not released on close would make a later round's upgrade refused."""
    node = start_node(1, "--max-connections-per-ip", "4", bus="memory")
    for round_number in range(3):
        sockets = [await upgrade(node, way) for way in PATHS for _ in range(2)]
        for index, ws in enumerate(sockets):
            await round_trip(ws, f"room-{round_number}-{index}")
        assert node.metric(0, CONNECTIONS) == 4
        for index, ws in enumerate(sockets):
            if index % 2:
                ws.close()  # gone without a close frame
            else:
                await close_cleanly(ws)
        await eventually(lambda: node.metric(0, CONNECTIONS), equals=0, what="every connection uncounted")
        await eventually(lambda: node.metric(0, CLOSED), equals=4 * (round_number + 1), what="every close counted")
        await eventually(lambda: established_on_port(node), equals=0, what="no socket left open on the worker")
    await eventually(lambda: node.metric(0, "ringcast_rooms_hosted"), equals=0, what="no room left hosted")
    assert nothing_logged_as_a_bug(node)


async def test_upgraded_sockets_outlive_the_handshake_and_keep_alive_timeouts(start_node):
    """Both timers are armed before the upgrade (the front door's, and aiohttp's keep-alive one after
    `GET /healthz`); an upgraded socket is not cut by them. A later incomplete head being cut is what shows
    that the timeout has passed."""
    node = start_node(1, "--handshake-timeout-s", "1", bus="memory")
    sockets = {way: await upgrade(node, way) for way in PATHS}
    for _ in range(2):
        reader, writer = await asyncio.open_connection(node.host, node.port)
        writer.write(b"GET /ws HTTP/1.1\r\n")
        try:
            assert await asyncio.wait_for(reader.read(), 15) == b""
        finally:
            writer.close()
    for way, ws in sockets.items():
        await round_trip(ws, f"room-{way}")
        await close_cleanly(ws)


async def test_sockets_that_vanish_with_work_pending_leave_no_room_or_connection_behind(start_node):
    """A join and publishes, then the socket aborted at once: the connection ends while its join may still be
    awaited (reading paused) and its publishes wait behind it."""
    node = start_node(1, bus="memory")
    keeper = await upgrade(node, "first_request")
    await round_trip(keeper, "kept")
    for way in PATHS:
        for index in range(5):
            ws = await upgrade(node, way)
            burst = text({"type": "join", "room": f"gone-{way}-{index}", "id": "j"})
            burst += b"".join(text({"type": "message", "room": f"gone-{way}-{index}", "text": "x", "id": i}) for i in range(5))
            ws.send_raw(burst)
            ws.writer.transport.abort()
    await eventually(lambda: node.metric(0, CONNECTIONS), equals=1, what="only the keeper counted")
    await eventually(lambda: node.metric(0, "ringcast_rooms_hosted"), equals=1, what="only the keeper's room hosted")
    await round_trip(keeper, "kept-again")
    await close_cleanly(keeper)
    assert nothing_logged_as_a_bug(node)


# --- reply order -------------------------------------------------------------------------------

@pytest.mark.parametrize("bus", ["redis", "memory"])
async def test_a_rate_limit_error_comes_after_the_acks_of_the_publishes_before_it(start_node, bus):
    # Burst 4: the join and three publishes are served, the fourth publish (same write) is refused while
    # the three are still in flight; its error must not overtake their acks.
    node = start_node(1, "--message-rate-per-s", "0.05", "--message-burst", "4",
                      "--flood-close-after-rejections", "10", bus=bus)
    ws = await upgrade(node, "first_request")
    ws.send_raw(text({"type": "join", "room": "order", "id": "j"}))
    assert (await next_frame(ws, ("joined", "error")))["type"] == "joined"
    ws.send_raw(b"".join(text({"type": "message", "room": "order", "text": f"m{i}", "id": i}) for i in range(4)))
    replies = [await next_frame(ws, ("ack", "error")) for _ in range(4)]
    assert [(reply["type"], reply.get("id"), reply.get("code")) for reply in replies] == [
        ("ack", 0, None), ("ack", 1, None), ("ack", 2, None), ("error", None, "RATE_LIMIT_EXCEEDED")]
    await close_cleanly(ws)
