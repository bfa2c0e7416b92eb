"""Every limit and every client-caused error code, on a real worker.

Limits are set small with node flags so each one is reached in a few frames.
Errors that keep the connection open are followed by a ping to prove it.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import msgpack
import orjson
import psutil
import pytest

from chaos.eventually import eventually
from chaos.rawws import OP_CONT, OP_TEXT, RawWebSocket, client_frame, read_http_answer, upgrade_request
from tests.wsclient import WsClient

# A connection is counted as closed (by reason) when the worker's handler for it ends, which is
# after the client saw the close: a test waits for that count, it never reads it right away.
CLOSED = "ringcast_connections_closed_total"


async def still_usable(client: WsClient, request_id: str = "alive") -> None:
    await client.send({"type": "ping", "id": request_id})
    pong = await client.expect_any(("pong", "error"))
    assert (pong["type"], pong["id"]) == ("pong", request_id)


async def error_for(client: WsClient, frame: dict | str | bytes) -> dict:
    """Send one frame (a dict in the client's codec, or raw text/bytes) and return the error it gets."""
    if isinstance(frame, dict):
        await client.send(frame)
    elif isinstance(frame, str):
        await client.ws.send_str(frame)
    else:
        await client.ws.send_bytes(frame)
    answer = await client.expect_any(("error", "pong", "joined", "left", "ack", "message"))
    assert answer["type"] == "error", answer
    assert answer["message"]
    return answer


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; the close code it sent (None if the socket was just cut)."""
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code


# --- error codes: answered, and the connection stays usable --------------------------------

async def test_each_client_error_gets_its_code_and_the_connection_stays_usable(start_node):
    node = start_node(1, "--max-frame-bytes", "4096", "--max-message-bytes", "512", "--max-rooms-per-connection", "2")
    client = await WsClient.connect(node.ws_url(0))
    try:
        limits = client.welcome["limits"]  # the welcome tells the client the limits that apply to it
        assert (limits["maxFrameBytes"], limits["maxMessageBytes"], limits["maxRoomsPerConnection"]) == (4096, 512, 2)
        cases: list[tuple[dict | str | bytes, str]] = [
            ("{not json", "INVALID_MESSAGE_FORMAT"),
            ("[1, 2]", "INVALID_MESSAGE_FORMAT"),
            ({"type": 42}, "INVALID_MESSAGE_FORMAT"),
            ({"type": "join", "room": "r", "id": 1.5}, "INVALID_MESSAGE_FORMAT"),
            ({"type": "message", "room": "r", "text": ["not", "text"]}, "INVALID_MESSAGE_FORMAT"),
            ({"type": "history", "room": "r", "limit": "all"}, "INVALID_MESSAGE_FORMAT"),
            ({"type": "subscribe", "room": "r"}, "UNKNOWN_TYPE"),
            (b'{"type":"ping"}', "WRONG_FRAME_TYPE"),
            ({"type": "join", "room": "bad room"}, "INVALID_ROOM"),
            ({"type": "join", "room": ""}, "INVALID_ROOM"),
            ({"type": "join", "room": "x" * 129}, "INVALID_ROOM"),
            ({"type": "leave", "room": "never"}, "NOT_JOINED"),
            ({"type": "message", "room": "never", "text": "hi"}, "NOT_JOINED"),
            ({"type": "message", "text": "no room and none joined"}, "ROOM_REQUIRED"),
        ]
        for frame, code in cases:
            error = await error_for(client, frame)
            assert error["code"] == code, (frame, error)
            await still_usable(client)

        await client.join("one")
        assert (await error_for(client, {"type": "join", "room": "one", "id": "again"})) | {"message": ""} == {
            "type": "error", "code": "ALREADY_JOINED", "id": "again", "message": "",
        }
        await still_usable(client)
        big = await error_for(client, {"type": "message", "room": "one", "text": "x" * 1000, "id": "big"})
        assert (big["code"], big["id"]) == ("MESSAGE_TOO_LARGE", "big")
        await still_usable(client)
        await client.join("two")
        ambiguous = await error_for(client, {"type": "message", "text": "which room?"})
        assert ambiguous["code"] == "ROOM_REQUIRED"
        too_many = await error_for(client, {"type": "join", "room": "three", "id": 3})
        assert (too_many["code"], too_many["id"]) == ("TOO_MANY_ROOMS", 3)
        await still_usable(client)
        # After leaving one, a third room fits again; nothing above was published.
        await client.send({"type": "leave", "room": "two"})
        await client.expect("left")
        await client.join("three")
        assert not [frame for frame in client.seen if frame["type"] in ("message", "ack")]
        assert node.metric(0, "ringcast_errors_total", 'code="INVALID_MESSAGE_FORMAT"') == 6
        assert node.metric(0, "ringcast_errors_total", 'code="NOT_JOINED"') == 2
        assert node.metric(0, "ringcast_messages_published_total") == 0
        assert node.metric(0, "ringcast_connections_closed_total") == 0
    finally:
        await client.close()


async def test_msgpack_connections_get_the_same_codes(start_node):
    node = start_node(1)
    client = await WsClient.connect(node.ws_url(0), codec="msgpack")
    try:
        for frame, code in [
            (b"\xc1\xc1", "INVALID_MESSAGE_FORMAT"),  # never-used msgpack byte
            (msgpack.packb([1, 2]), "INVALID_MESSAGE_FORMAT"),
            (msgpack.packb({"type": "message", "room": "r", "data": b"\x00"}, use_bin_type=True), "INVALID_MESSAGE_FORMAT"),
            (msgpack.packb({"type": "message", "room": "r", "data": b""}, use_bin_type=True), "INVALID_MESSAGE_FORMAT"),
            ('{"type":"ping"}', "WRONG_FRAME_TYPE"),
            ({"type": "nope"}, "UNKNOWN_TYPE"),
            ({"type": "join", "room": "bad/room?"}, "INVALID_ROOM"),
            ({"type": "leave", "room": "r"}, "NOT_JOINED"),
        ]:
            error = await error_for(client, frame)
            assert error["code"] == code, (frame, error)
            await still_usable(client)
    finally:
        await client.close()


async def test_an_empty_binary_value_never_reaches_json_members(start_node):
    """A msgpack member must not be able to publish what JSON members cannot decode."""
    node = start_node(1)
    packer = await WsClient.connect(node.ws_url(0), codec="msgpack")
    reader = await WsClient.connect(node.ws_url(0))
    try:
        await packer.join("mixed")
        await reader.join("mixed")
        await packer.ws.send_bytes(msgpack.packb({"type": "message", "data": {"k": b""}}, use_bin_type=True))
        assert (await packer.expect_any(("error", "message")))["code"] == "INVALID_MESSAGE_FORMAT"
        await packer.send({"type": "message", "text": "after"})
        assert (await reader.expect("message"))["text"] == "after"
    finally:
        await packer.close()
        await reader.close()


# --- frame size --------------------------------------------------------------------------

async def test_a_frame_over_max_frame_bytes_closes_1009_and_one_at_the_limit_does_not(start_node):
    node = start_node(1, "--max-frame-bytes", "1024", "--max-message-bytes", "4096")
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.join("r")
        at_limit = orjson.dumps({"type": "message", "room": "r", "text": ""})
        at_limit = orjson.dumps({"type": "message", "room": "r", "text": "y" * (1024 - len(at_limit))})
        assert len(at_limit) == 1024
        await client.ws.send_str(at_limit.decode())
        assert len((await client.expect("message"))["text"]) == 1024 - len(b'{"type":"message","room":"r","text":""}')
        await client.ws.send_str("x" * 1025)
        assert await closed_with(client.ws) == 1009
        await eventually(lambda: node.metric(0, CLOSED, 'reason="too_big"'), equals=1, what="one too_big close")
    finally:
        await client.close()


async def test_the_frame_limit_applies_to_fragmented_and_binary_messages_too(start_node):
    node = start_node(1, "--max-frame-bytes", "1024")
    fragmented = await RawWebSocket.connect(node.host, node.port)
    await fragmented.recv()  # welcome
    # Two fragments of 600 bytes: each is under the limit, the message is not.
    fragmented.send(OP_TEXT, b'{"type":"ping","pad":"' + b"x" * 578, fin=False)
    fragmented.send(OP_CONT, b"x" * 598 + b'"}')
    assert await fragmented.recv_close() == 1009
    fragmented.close()
    packed = await WsClient.connect(node.ws_url(0), codec="msgpack")
    try:
        await packed.ws.send_bytes(msgpack.packb({"type": "ping", "pad": "x" * 1100}))
        assert await closed_with(packed.ws) == 1009
    finally:
        await packed.close()
    # A fragmented message within the limit is reassembled and served.
    whole = await RawWebSocket.connect(node.host, node.port)
    await whole.recv()
    whole.send(OP_TEXT, b'{"type":"ping",', fin=False)
    whole.send(OP_CONT, b'"id":"frag"}')
    opcode, payload = await whole.recv()
    assert opcode == OP_TEXT and orjson.loads(payload) == {"type": "pong", "ts": orjson.loads(payload)["ts"], "id": "frag"}
    whole.close()
    await eventually(lambda: node.metric(0, CLOSED, 'reason="too_big"'), equals=2, what="two too_big closes")


# --- rate limit and flooding ----------------------------------------------------------------

async def test_rate_limit_answers_with_retry_after_then_sustained_flooding_closes_1008(start_node):
    node = start_node(
        1, "--message-rate-per-s", "0.05", "--message-burst", "3", "--flood-close-after-rejections", "4",
    )
    client = await WsClient.connect(node.ws_url(0))
    try:
        for i in range(3):
            await client.send({"type": "ping", "id": i})
            assert (await client.expect_any(("pong", "error")))["type"] == "pong"
        await client.send({"type": "ping", "id": "over"})
        limited = await client.expect_any(("pong", "error"))
        assert limited["code"] == "RATE_LIMIT_EXCEEDED" and 0 < limited["retryAfter"] <= 20.0  # 1 token at 0.05/s
        for i in range(2):
            await client.send({"type": "ping"})
            assert (await client.expect_any(("pong", "error")))["code"] == "RATE_LIMIT_EXCEEDED"
        await client.send({"type": "ping"})  # the 4th consecutive refusal
        assert await closed_with(client.ws) == 1008
        await eventually(lambda: node.metric(0, CLOSED, 'reason="flood"'), equals=1, what="one flood close")
        assert node.metric(0, "ringcast_rate_limited_messages_total") == 4
        assert node.metric(0, "ringcast_errors_total", 'code="RATE_LIMIT_EXCEEDED"') == 3
    finally:
        await client.close()


async def test_a_client_that_waits_retry_after_is_served_again(start_node):
    node = start_node(1, "--message-rate-per-s", "1", "--message-burst", "1", "--flood-close-after-rejections", "3")
    client = await WsClient.connect(node.ws_url(0))
    try:
        await still_usable(client, "first")
        await client.send({"type": "ping"})
        limited = await client.expect_any(("pong", "error"))
        assert limited["code"] == "RATE_LIMIT_EXCEEDED"
        await asyncio.sleep(limited["retryAfter"] * 1.5)
        await still_usable(client, "after-waiting")
    finally:
        await client.close()


# --- connection caps ----------------------------------------------------------------------------

async def test_the_per_ip_cap_refuses_with_http_429_before_the_upgrade(start_node):
    node = start_node(1, "--max-connections-per-ip", "2")
    first = await WsClient.connect(node.ws_url(0))
    second = await WsClient.connect(node.ws_url(0))
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(node.ws_url(0))
            assert info.value.status == 429
        assert node.metric(0, "ringcast_connections_rejected_total", 'reason="TOO_MANY_CONNECTIONS_FROM_IP"') == 1
        assert node.metric(0, "ringcast_connections_opened_total") == 2
        await still_usable(first)
        await second.close()
        await eventually(lambda: node.metric(0, "ringcast_connections"), equals=1, what="the closed slot freed")
        third = await WsClient.connect(node.ws_url(0))  # a slot freed up
        await still_usable(third)
        await third.close()
    finally:
        await first.close()
        await second.close()


async def test_the_per_worker_cap_closes_with_1013(start_node):
    node = start_node(1, "--max-connections", "2")
    clients = [await WsClient.connect(node.ws_url(0)) for _ in range(2)]
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(node.ws_url(0))
            assert await closed_with(ws) == 1013
        assert node.metric(0, "ringcast_connections_rejected_total", 'reason="WORKER_FULL"') == 1
        for client in clients:
            await still_usable(client)
    finally:
        for client in clients:
            await client.close()


# --- slow consumer ------------------------------------------------------------------------------

async def open_stalled_reader(host: str, port: int, room: str) -> asyncio.StreamWriter:
    """A client that joins `room`, then never reads again (tiny receive buffer); close its writer to end it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(upgrade_request(host, port, "/ws"))
    assert (await read_http_answer(reader)).status == 101
    writer.write(client_frame(OP_TEXT, orjson.dumps({"type": "join", "room": room})))
    await writer.drain()
    # Read welcome and joined, then stop reading for good.
    seen = b""
    while b'"joined"' not in seen:
        seen += await asyncio.wait_for(reader.read(4096), 10)
    writer.transport.pause_reading()
    return writer


SLOW_CONSUMER_BOUND_BYTES = 1024 * 1024


async def test_a_slow_consumer_is_cut_and_counted_and_the_worker_memory_stays_bounded(start_node):
    node = start_node(
        1, "--max-outbound-bytes", str(SLOW_CONSUMER_BOUND_BYTES),
        "--message-rate-per-s", "100000", "--message-burst", "100000",
    )
    worker = psutil.Process(node.worker_pid(0))
    stalled = await open_stalled_reader(node.host, node.port, "firehose")
    publisher = await WsClient.connect(node.ws_url(0))
    await publisher.join("firehose")
    received = 0
    caught_up = asyncio.Event()
    wanted = 0

    async def drain() -> None:
        nonlocal received
        while True:
            frame = await publisher.recv(30)
            received += frame["type"] == "message"
            if received >= wanted:
                caught_up.set()

    drainer = asyncio.create_task(drain())
    try:
        rss_before = worker.memory_info().rss
        chunk = "z" * 16 * 1024
        count, window = 2000, 16  # ~32 MiB for the stalled reader: 32 times its outbound bound
        for sent in range(0, count, window):
            for _ in range(window):
                await publisher.send({"type": "message", "room": "firehose", "text": chunk})
            # The publisher reads its echoes too: keep it well inside its own bound (16 x 16 KiB in flight).
            wanted = sent + window
            caught_up.clear()
            if received < wanted:
                await asyncio.wait([drainer, asyncio.ensure_future(caught_up.wait())], timeout=30,
                                   return_when=asyncio.FIRST_COMPLETED)
            if drainer.done():
                drainer.result()  # raises what stopped the reading member
            assert received >= wanted, (received, wanted)
        assert node.metric(0, "ringcast_slow_consumer_disconnects_total") == 1  # counted when the bound is hit
        # Its socket is cut up to a second later (SLOW_CONSUMER_GRACE_S); only then does its handler end.
        await eventually(lambda: node.metric(0, CLOSED, 'reason="slow_consumer"'), equals=1,
                         what="the slow consumer's connection closed and counted")
        assert node.metric(0, "ringcast_connections") == 1  # updated before the close is counted
        rss_after = worker.memory_info().rss
        # Unbounded, the stalled reader's queue alone would hold ~32 MiB.
        print(f"worker RSS grew by {(rss_after - rss_before) / 2**20:.1f} MiB while 31 MiB went to a stalled reader")
        assert rss_after - rss_before < 12 * 1024 * 1024, (rss_before, rss_after)
    finally:
        drainer.cancel()
        stalled.close()
        await publisher.close()


# --- heartbeat ------------------------------------------------------------------------------------

async def test_a_peer_that_never_answers_pings_is_terminated_and_one_that_does_is_kept(start_node):
    node = start_node(1, "--heartbeat-interval-s", "0.5", "--heartbeat-timeout-s", "1.5")
    async with aiohttp.ClientSession() as session:
        # The answering peer answers each ping itself (aiohttp only does it inside receive()), and counts them.
        answering = await session.ws_connect(node.ws_url(0), autoping=False)
        answered = {"pings": 0}
        frames: asyncio.Queue = asyncio.Queue()

        async def answer_pings() -> None:
            while True:
                msg = await answering.receive()
                if msg.type is aiohttp.WSMsgType.PING:
                    await answering.pong(msg.data)
                    answered["pings"] += 1
                    continue
                await frames.put(msg)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return

        reader = asyncio.create_task(answer_pings())
        try:
            silent = await session.ws_connect(node.ws_url(0), autoping=False)
            pings = 0
            while True:
                msg = await silent.receive(timeout=10)
                if msg.type is aiohttp.WSMsgType.PING:
                    pings += 1
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            assert pings == 1  # one unanswered ping is enough
            await eventually(lambda: node.metric(0, CLOSED, 'reason="heartbeat_timeout"'), equals=1,
                             what="the silent peer terminated and counted")
            # The worker sends the next ping only once the last one is answered: five pings prove it took the
            # pongs, over 2.5 s, longer than an unanswered ping lives (interval + timeout).
            await eventually(lambda: answered["pings"] >= 5, what="five pings answered by the answering peer")
            await answering.send_str('{"type":"ping","id":"still-here"}')
            seen = []
            while not any(f.get("id") == "still-here" for f in seen):
                msg = await asyncio.wait_for(frames.get(), 10)
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                seen.append(orjson.loads(msg.data))
            assert [f["type"] for f in seen] == ["welcome", "pong"]
            assert node.metric(0, "ringcast_connections") == 1
            assert node.metric(0, CLOSED) == 1
        finally:
            reader.cancel()
            await answering.close()
