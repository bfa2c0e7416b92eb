"""WebSocket control frames (ping, pong) cost rate-limit tokens like every other client frame.

The worker reads pings and pongs itself (aiohttp's autoping is off): each one
is charged to the connection's bucket, a ping refused by the bucket gets no
pong, and a run of refusals closes the connection with 1008 and is counted as
a flood, exactly as for data frames. A client whose library pings now and then
never comes near the limit.
"""

from __future__ import annotations

import pytest

from chaos.eventually import eventually
from chaos.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, close_payload
from tests.security.bystanders import Bystanders

BURST = 20  # --message-burst of these tests; the refill (--message-rate-per-s 0.001) adds no token during a test
CLOSE_AFTER = 10  # --flood-close-after-rejections
FLOOD = 300  # control frames the flooder sends at once: far past BURST + CLOSE_AFTER, bounded
FLAGS = ("--message-rate-per-s", "0.001", "--message-burst", str(BURST),
         "--flood-close-after-rejections", str(CLOSE_AFTER))
CLOSED = "ringcast_connections_closed_total"


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG], ids=["ping", "pong"])
async def test_a_control_frame_flood_is_closed_1008_and_counted_as_a_flood(start_node, opcode):
    node = start_node(1, *FLAGS)
    bystanders = await Bystanders.join(node.ws_url())
    ws = await RawWebSocket.connect(node.host, node.port)
    try:
        for n in range(FLOOD):
            ws.send(opcode, b"%d" % n)
        pongs = 0
        while True:
            kind, payload = await ws.recv()
            if kind == OP_CLOSE:
                break
            pongs += kind == OP_PONG
        assert int.from_bytes(payload[:2], "big") == 1008
        ws.send(OP_CLOSE, close_payload(1000))  # the closing handshake; the worker counts the close after it
        # Every ping the bucket allowed was answered, none past it; unasked pongs are never answered.
        assert pongs == (BURST if opcode == OP_PING else 0)
        await eventually(lambda: node.metric(0, CLOSED, 'reason="flood"'), equals=1, what="the flood close counted")
        assert node.metric(0, "ringcast_rate_limited_messages_total") == CLOSE_AFTER
        for _ in range(3):
            await bystanders.publish()
        await bystanders.assert_all_received()
    finally:
        ws.close()
        await bystanders.close()


async def test_pings_and_data_frames_share_one_budget(start_node):
    node = start_node(1, *FLAGS)
    ws = await RawWebSocket.connect(node.host, node.port)
    try:
        for _ in range(BURST):
            ws.send(OP_PING, b"")
        ws.send(OP_TEXT, b'{"type": "ping", "id": "after"}')  # the bucket is empty: refused, not answered
        answers = []
        while len(answers) < BURST + 2:  # welcome, BURST pongs, and the answer to the text frame
            kind, payload = await ws.recv()
            answers.append((kind, payload))
        assert [kind for kind, _ in answers[1:-1]] == [OP_PONG] * BURST
        kind, payload = answers[-1]
        assert kind == OP_TEXT and b'"RATE_LIMIT_EXCEEDED"' in payload
    finally:
        ws.close()


async def test_a_client_that_pings_now_and_then_keeps_its_connection(start_node):
    node = start_node(1, *FLAGS)
    ws = await RawWebSocket.connect(node.host, node.port)
    try:
        kind, _ = await ws.recv()  # welcome
        assert kind == OP_TEXT
        for n in range(BURST // 4):  # one ping at a time, each answered before the next: half the budget in all
            ws.send(OP_PING, b"keepalive-%d" % n)
            kind, payload = await ws.recv()
            assert (kind, payload) == (OP_PONG, b"keepalive-%d" % n)
            ws.send(OP_PONG, b"")  # an unasked pong now and then costs a token too, and is fine
        ws.send(OP_TEXT, b'{"type": "ping", "id": "still-here"}')
        kind, payload = await ws.recv()
        assert kind == OP_TEXT and b'"pong"' in payload and b'"still-here"' in payload
        assert node.metric(0, "ringcast_rate_limited_messages_total") == 0
        assert node.metric(0, CLOSED, 'reason="flood"') == 0
    finally:
        ws.close()
