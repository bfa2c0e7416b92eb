"""What a request costs its requester in bytes, on real workers over a real Redis.

A `history` reply or a resume page of big messages is cut into pages by bytes
(at most half of `max_outbound_bytes`, at least one message), so a client
that reads promptly is never closed as a slow consumer by its own request:
`complete: false` (history) or `too_many_missed` (resume) tells it to ask for
the rest. And `max_message_bytes` bounds the `message` frame as each codec
delivers it, not only the bytes on the bus: msgpack data that JSON would
escape to several times its size is refused before it is published. (Small
messages skip that measurement under a proven bound, checked at the end.)
"""

from __future__ import annotations

import asyncio
import socket
import struct

import msgpack
import orjson
from hypothesis import given, settings

from chaos.rawws import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, read_http_answer, upgrade_request
from node import envelope
from node.session import FRAME_FIELDS_BOUND_BYTES, JSON_GROWTH_BOUND, delivered_bytes
from tests.node.wire_helpers import json_values
from tests.wsclient import WsClient

MAX_OUTBOUND = 256 * 1024  # --max-outbound-bytes of these tests
BIG_TEXT = "x" * 60_000  # one message: under the default max_message_bytes (65536), a quarter of MAX_OUTBOUND
MESSAGES = 40  # --history-size and --max-history-page: ~2.4 MB in one page unless it is cut by bytes
CLOSED = "ringcast_connections_closed_total"


class WindowedReader:
    """A client that reads promptly through a small TCP receive window, as over a real network.

    On loopback the kernel's autotuned buffers take megabytes from one write at
    once, so nothing would wait in the worker; with a 4 KiB window (as with any
    real round-trip time) one write moves little, and what is left waits in the
    worker's user-space buffer, which `max_outbound_bytes` bounds.
    """

    def __init__(self, ws: RawWebSocket, binary: bool) -> None:
        self.ws = ws
        self.binary = binary

    @classmethod
    async def connect(cls, host: str, port: int, codec: str = "json") -> "WindowedReader":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 10)
        reader, writer = await asyncio.open_connection(sock=sock)
        headers = {"Sec-WebSocket-Protocol": "ringcast.msgpack"} if codec == "msgpack" else {}
        writer.write(upgrade_request(host, port, "/ws", headers))
        answer = await asyncio.wait_for(read_http_answer(reader), 10)
        assert answer.status == 101, answer
        client = cls(RawWebSocket(reader, writer, answer), codec == "msgpack")
        await next_of(client, ("welcome",))
        return client

    async def send(self, frame: dict) -> None:
        if self.binary:
            self.ws.send(OP_BINARY, msgpack.packb(frame))
        else:
            self.ws.send(OP_TEXT, orjson.dumps(frame))

    async def recv(self) -> tuple[dict, int]:
        """The next data frame, decoded, and its payload size in bytes as the worker sent it."""
        for _ in range(100):  # bounded: control frames in between are few
            opcode, payload = await self.ws.recv(timeout_s=10)
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise ConnectionError(f"the worker closed the connection with {code}: {payload[2:]!r}")
            if opcode in (OP_TEXT, OP_BINARY):
                return (msgpack.unpackb(payload) if self.binary else orjson.loads(payload)), len(payload)
        raise AssertionError("only control frames")

    def close(self) -> None:
        self.ws.close()


async def next_of(client: WindowedReader, kinds: tuple[str, ...]) -> tuple[dict, int]:
    for _ in range(1000):  # bounded: what else may arrive first is a few frames
        frame, size = await client.recv()
        if frame["type"] in kinds:
            return frame, size
    raise AssertionError(f"no frame of {kinds}")


async def publish_big(node) -> str:
    """MESSAGES messages of BIG_TEXT in room `big`, each acknowledged; the room's epoch."""
    publisher = await WsClient.connect(node.ws_url(0))
    try:
        await publisher.join("big")
        for n in range(1, MESSAGES + 1):
            await publisher.send({"type": "message", "room": "big", "text": BIG_TEXT, "id": n})
            ack = await publisher.expect("ack", timeout_s=10)
            assert ack["seq"] == n
        return ack["epoch"]
    finally:
        await publisher.close()


async def still_served(client: WindowedReader) -> None:
    """The worker still answers it: it was not closed as a slow consumer (that would be a 1013 close here)."""
    await client.send({"type": "ping", "id": "still-served"})
    pong, _ = await next_of(client, ("pong",))
    assert pong["id"] == "still-served"


async def read_all_history(client: WindowedReader, first_request: dict) -> list[int]:
    """Ask for history page after page until `complete`; the seqs received, checking each page's size."""
    seqs: list[int] = []
    request = first_request
    for _ in range(MESSAGES + 1):  # bounded: each page holds at least one message
        await client.send({"type": "history", "room": "big", **request})
        page, size = await next_of(client, ("history", "error"))
        assert page["type"] == "history", page
        assert page["messages"] and size <= MAX_OUTBOUND // 2, (len(page["messages"]), size)
        seqs += [message["seq"] for message in page["messages"]]
        if page["complete"]:
            await still_served(client)
            return seqs
        request = {"since": {"seq": seqs[-1], "epoch": page["epoch"]}}
    raise AssertionError("history never said complete")


async def test_history_and_resume_pages_of_big_messages_are_cut_by_bytes_not_by_the_slow_consumer_bound(start_node):
    node = start_node(1, "--max-outbound-bytes", str(MAX_OUTBOUND), "--socket-send-buffer-bytes", "4096",
                      "--history-size", str(MESSAGES), "--max-history-page", str(MESSAGES))
    epoch = await publish_big(node)
    json_reader = await WindowedReader.connect(node.host, node.port)
    msgpack_reader = await WindowedReader.connect(node.host, node.port, codec="msgpack")
    resumer = await WindowedReader.connect(node.host, node.port)
    try:
        # The latest page (no `since`), then the rest after it: every message once, in order.
        for reader in (json_reader, msgpack_reader):
            assert await read_all_history(reader, {"limit": MESSAGES}) == list(range(1, MESSAGES + 1))
        assert node.metric(0, "ringcast_slow_consumer_disconnects_total") == 0

        # A resume from the start: the page is cut by bytes, said as too_many_missed, then history has the rest.
        await resumer.send({"type": "join", "room": "big", "since": {"seq": 0, "epoch": ""}, "id": "resume"})
        await resumer.send({"type": "ping", "id": "after-the-page"})  # answered after the whole page
        joined, _ = await next_of(resumer, ("joined",))
        assert (joined["seq"], joined["recovered"], joined["reason"]) == (MESSAGES, False, "too_many_missed")
        replayed = []
        for _ in range(MESSAGES):  # bounded: the page holds fewer
            frame, _ = await next_of(resumer, ("message", "pong"))
            if frame["type"] == "pong":
                break
            replayed.append(frame["seq"])
        assert replayed and replayed == list(range(1, len(replayed) + 1)) and len(replayed) < MESSAGES
        rest = await read_all_history(resumer, {"since": {"seq": replayed[-1], "epoch": epoch}})
        assert rest == list(range(len(replayed) + 1, MESSAGES + 1))

        assert node.metric(0, "ringcast_slow_consumer_disconnects_total") == 0
        assert node.metric(0, CLOSED, 'reason="slow_consumer"') == 0
    finally:
        for client in (json_reader, msgpack_reader, resumer):
            client.close()


async def test_max_message_bytes_bounds_the_delivered_frame_in_each_codec(start_node):
    limit = 16 * 1024
    node = start_node(1, "--max-message-bytes", str(limit))
    member = await WindowedReader.connect(node.host, node.port)  # JSON
    publisher = await WsClient.connect(node.ws_url(0), codec="msgpack")
    try:
        await member.send({"type": "join", "room": "escapes"})
        await next_of(member, ("joined",))
        await publisher.join("escapes")
        # 10,000 control characters: ~10 KB in msgpack (and on the bus), ~60 KB escaped as JSON.
        await publisher.send({"type": "message", "room": "escapes", "text": "\x01" * 10_000, "id": "inflates"})
        refused = await publisher.expect_any(("error", "ack"))
        assert (refused["type"], refused.get("code"), refused["id"]) == ("error", "MESSAGE_TOO_LARGE", "inflates")

        # One that fits in both codecs is delivered; the JSON member's frame is within the limit.
        await publisher.send({"type": "message", "room": "escapes", "text": "\x01" * 2_000, "id": "fits"})
        assert (await publisher.expect("ack"))["id"] == "fits"
        delivered, size = await next_of(member, ("message",))
        assert delivered["text"] == "\x01" * 2_000 and size <= limit  # the first message it gets: the big one never went out
        assert node.metric(0, "ringcast_messages_published_total") == 1
    finally:
        member.close()
        await publisher.close()


# --- the bound that lets small publishes skip measuring, without a worker ----------------------

def within_the_bound(data) -> bool:
    """Whether the publish shortcut's bound covers `data`'s delivered frame (it is measured only past it)."""
    room, sender, ts_ms = "r" * 128, "s" * 128, 2**53
    body = envelope.pack(envelope.Envelope(ts_ms, sender, "data", data))
    bound = len(body) * JSON_GROWTH_BOUND + FRAME_FIELDS_BOUND_BYTES + len(room)
    return delivered_bytes(room, ts_ms, sender, "data", data) <= bound


def test_the_json_growth_bound_holds_for_the_values_that_grow_most():
    # A msgpack float32 is read back as a double, whose shortest JSON form can be long.
    float32s = [struct.unpack("!f", struct.pack("!f", value))[0] for value in (1.1, -1.1754943508222875e-38, 3.4e38)]
    worst = [
        "\x01" * 5000, [False] * 5000, [None] * 5000, [[]] * 5000, [{}] * 5000, [""] * 5000, float32s * 1000,
        {"\x01" * n: False for n in range(1, 200)}, '"\\' * 2000, [-32] * 5000, [[[[[]]]]] * 1000, False, None, "",
    ]
    for data in worst:
        assert within_the_bound(data), data if len(str(data)) < 80 else type(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_the_json_growth_bound_holds_for_any_json_value(data):
    assert within_the_bound(data)
