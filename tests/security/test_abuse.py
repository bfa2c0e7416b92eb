"""What each abuse from the tutorial's Section VIII (and beyond) meets on a real worker.

Every row of docs/security.md that is not about tokens or admission has its
test here. Abuse tests keep bystanders talking during the attack and check
they lose nothing.
"""

from __future__ import annotations

import json

import msgpack
import orjson

from chaos.rawws import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, client_frame, close_payload
from tests.security.bystanders import Bystanders
from tests.security.tokens import KEY1, bearer, flag, token
from tests.wsclient import WsClient


async def _raw(node) -> RawWebSocket:
    ws = await RawWebSocket.connect(node.host, node.port)
    opcode, payload = await ws.recv()
    assert opcode == OP_TEXT and json.loads(payload)["type"] == "welcome"
    return ws


async def _answer(ws: RawWebSocket) -> dict:
    opcode, payload = await ws.recv()
    assert opcode in (OP_TEXT, OP_BINARY), (opcode, payload)
    return orjson.loads(payload) if opcode == OP_TEXT else msgpack.unpackb(payload)


async def _still_open(ws: RawWebSocket) -> bool:
    ws.send(OP_TEXT, b'{"type":"ping","id":"alive"}')
    return (await _answer(ws))["id"] == "alive"


# --- message flooding -----------------------------------------------------------------

async def test_one_users_connections_share_one_budget_and_bystanders_keep_theirs(start_node):
    node = start_node(
        1, "--jwt-secret", flag(KEY1), "--user-message-rate-per-s", "0.01", "--user-message-burst", "10",
        "--message-rate-per-s", "1000", "--message-burst", "1000", "--flood-close-after-rejections", "1000",
    )
    bystanders = await Bystanders.join(node.ws_url(), headers=bearer(token(sub="carol")))
    first = await WsClient.connect(node.ws_url(), headers=bearer(token(sub="alice")))
    second = await WsClient.connect(node.ws_url(), headers=bearer(token(sub="alice")))
    answers = []
    for i in range(8):  # 16 frames from alice: more than her 10, fewer than either connection's 1000
        for client in (first, second):
            await client.send({"type": "ping", "id": i})
            answers.append(await client.expect_any(("pong", "error")))
        await bystanders.publish()
    pongs = [a for a in answers if a["type"] == "pong"]
    refused = [a for a in answers if a["type"] == "error"]
    assert len(pongs) == 10 and len(refused) == 6
    assert all(a["code"] == "RATE_LIMIT_EXCEEDED" and a["retryAfter"] > 0 for a in refused)
    await bystanders.assert_all_received()  # carol is another user: her budget is her own
    for client in (first, second):
        await client.close()
    await bystanders.close()


async def test_sustained_flooding_escalates_to_close_1008(start_node):
    node = start_node(1, "--message-rate-per-s", "0.01", "--message-burst", "5", "--flood-close-after-rejections", "5")
    bystanders = await Bystanders.join(node.ws_url())
    ws = await _raw(node)
    for _ in range(10):
        ws.send(OP_TEXT, b'{"type":"ping"}')
    codes = []
    while True:
        opcode, payload = await ws.recv()
        if opcode == OP_CLOSE:
            break
        codes.append(json.loads(payload).get("code"))
        if len(bystanders.sent) < 3:  # the bystanders have the same small budget (join + 3 publishes < 5)
            await bystanders.publish()
    assert int.from_bytes(payload[:2], "big") == 1008
    assert codes.count("RATE_LIMIT_EXCEEDED") == 4 and codes.count(None) == 5  # 5 pongs, 4 warnings, then 1008
    ws.close()
    await bystanders.assert_all_received()
    await bystanders.close()


# --- payload bombs ----------------------------------------------------------------------

async def test_a_frame_claiming_more_than_the_limit_is_closed_1009_from_its_header(start_node):
    node = start_node(1, "--max-frame-bytes", "4096")
    bystanders = await Bystanders.join(node.ws_url())
    ws = await _raw(node)
    ws.send_raw(client_frame(OP_TEXT, b"", claimed_length=100 * 1024 * 1024))
    # Only the header was sent: the worker refuses without waiting for 100 MiB it would buffer.
    assert await ws.recv_close() == 1009
    ws.close()
    await bystanders.publish()
    await bystanders.assert_all_received()
    await bystanders.close()


async def test_permessage_deflate_is_never_negotiated_and_a_compressed_frame_is_a_protocol_error(start_node):
    node = start_node(1)
    ws = await RawWebSocket.connect(
        node.host, node.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    )
    assert "sec-websocket-extensions" not in ws.answer.headers
    await ws.recv()  # welcome
    ws.send(OP_TEXT, b"\xf2\xcb\x48\x55\x00\x00", rsv=4)  # RSV1: "compressed", which was not agreed
    assert await ws.recv_close() == 1002
    ws.close()


async def test_messages_larger_than_the_bus_limit_are_refused_and_never_published(start_node):
    node = start_node(1, "--max-message-bytes", "1024")
    bystanders = await Bystanders.join(node.ws_url())
    await bystanders.publisher.send({"type": "message", "room": "bystanders", "text": "x" * 2000, "id": "big"})
    refused = await bystanders.publisher.expect("error")
    assert (refused["code"], refused["id"]) == ("MESSAGE_TOO_LARGE", "big")
    await bystanders.publish()
    await bystanders.assert_all_received()  # the listener's next message is the small one: the big one never went out
    await bystanders.close()


async def test_deep_nesting_is_refused_in_json_and_msgpack(start_node):
    node = start_node(1, "--max-json-depth", "8")
    json_client = await WsClient.connect(node.ws_url())
    msgpack_client = await WsClient.connect(node.ws_url(), codec="msgpack")
    for client in (json_client, msgpack_client):
        await client.join("deep")
        nested: list = []
        for _ in range(20):
            nested = [nested]
        await client.send({"type": "message", "room": "deep", "data": nested, "id": 1})
        refused = await client.expect("error")
        assert refused["code"] == "INVALID_MESSAGE_FORMAT" and "nested deeper" in refused["message"]
    # Past the parsers' own stacks: orjson stops at 1024 levels, msgpack at its unpacker stack.
    await json_client.ws.send_str("[" * 5000 + "]" * 5000)
    assert (await json_client.expect("error"))["code"] == "INVALID_MESSAGE_FORMAT"
    await msgpack_client.ws.send_bytes(b"\x91" * 60000 + b"\xc0")
    assert (await msgpack_client.expect("error"))["code"] == "INVALID_MESSAGE_FORMAT"
    await msgpack_client.ws.send_bytes(b"\xdd\xff\xff\xff\xff")  # an array claiming 4 billion items
    assert (await msgpack_client.expect("error"))["code"] == "INVALID_MESSAGE_FORMAT"
    await json_client.close()
    await msgpack_client.close()


# --- odd input -----------------------------------------------------------------------------

async def test_odd_room_names_get_invalid_room(start_node):
    node = start_node(1)
    client = await WsClient.connect(node.ws_url())
    for room in ("x" * 129, "a\x00b", "a\nb", "räum", "a b", "", "\u202eevil", "room\x1b[31m"):
        await client.send({"type": "join", "room": room, "id": "r"})
        assert (await client.expect("error"))["code"] == "INVALID_ROOM", room
    await client.send({"type": "join", "room": 7})
    assert (await client.expect("error"))["code"] == "INVALID_ROOM"
    await client.close()


async def test_control_characters_in_data_are_delivered_exactly(start_node):
    node = start_node(1)
    bystanders = await Bystanders.join(node.ws_url())
    text = "\x00\x07\x1b[2J\r\n\u2028\u202e\ufeff end"
    await bystanders.publisher.send({"type": "message", "room": "bystanders", "text": text})
    assert (await bystanders.listener.expect("message"))["text"] == text
    await bystanders.close()


async def test_invalid_utf8_in_a_text_frame_closes_1007(start_node):
    node = start_node(1)
    ws = await _raw(node)
    ws.send(OP_TEXT, b'{"type":"ping","x":"\xff\xfe"}')
    assert await ws.recv_close() == 1007
    ws.close()


async def test_a_binary_frame_on_a_json_connection_gets_wrong_frame_type_and_stays_open(start_node):
    node = start_node(1)
    ws = await _raw(node)
    ws.send(OP_BINARY, msgpack.packb({"type": "ping"}))
    assert (await _answer(ws))["code"] == "WRONG_FRAME_TYPE"
    assert await _still_open(ws)
    ws.close()


async def test_frames_after_close_are_ignored(start_node):
    node = start_node(1)
    ws = await _raw(node)
    # One write: the frames after the close reach the worker with it. Sent one by one, a loaded machine
    # could let the worker close the socket between them (the later writes then meet a reset).
    ws.send_raw(client_frame(OP_CLOSE, close_payload(1000)) + client_frame(OP_TEXT, b'{"type":"join","room":"late"}')
                + client_frame(OP_TEXT, b'{"type":"ping"}'))
    # The worker answers the close, and nothing else: no joined, no pong.
    opcode, payload = await ws.recv()
    assert opcode == OP_CLOSE and int.from_bytes(payload[:2], "big") == 1000
    assert await ws.at_eof()
    assert node.metric(0, "ringcast_messages_received_total") == 0
    ws.close()
