"""A WebSocket client that joins rooms and then stops reading: the slow consumer of the slow-consumer drill.

Owns a deliberately minimal client over a raw TCP socket with a tiny
receive buffer (SO_RCVBUF set before connecting), so that once it stops
reading the server's writes back up quickly into the worker's outbound
buffer, as with a real stalled phone or a frozen browser tab. A library
client would keep reading into its own buffers and hide the stall.

It must not be used to verify delivery (RoomMember does) and it never
answers pings: being cut off is the expected outcome.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from urllib.parse import urlparse

import orjson

RECEIVE_BUFFER_BYTES = 4096  # the kernel doubles it; small so a stall shows up at the server within seconds


def masked_text_frame(payload: bytes) -> bytes:
    """One client->server text frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes([0x81, 0x80 | length])
    elif length < 65536:
        header = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return opcode, await reader.readexactly(length)


class StalledReader:
    """Connects, joins `rooms`, waits for each `joined`, then never reads again."""

    def __init__(self, url: str, rooms: list[str]) -> None:
        self.url = url
        self.rooms = rooms
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, timeout_s: float = 10.0) -> None:
        parsed = urlparse(self.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setblocking(False)
        async with asyncio.timeout(timeout_s):
            await asyncio.get_running_loop().sock_connect(sock, (parsed.hostname, parsed.port))
            # A small stream limit: asyncio stops reading the socket once this much is buffered.
            reader, writer = await asyncio.open_connection(sock=sock, limit=RECEIVE_BUFFER_BYTES)
            self.writer = writer
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET {parsed.path or '/ws'} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            status = await reader.readuntil(b"\r\n\r\n")
            if b" 101 " not in status.split(b"\r\n", 1)[0]:
                raise ConnectionError(f"upgrade refused: {status[:80]!r}")
            for room in self.rooms:
                writer.write(masked_text_frame(orjson.dumps({"type": "join", "room": room, "id": room})))
            waiting = set(self.rooms)
            while waiting:
                opcode, payload = await _read_frame(reader)
                if opcode == 0x1:
                    frame = orjson.loads(payload)
                    if frame.get("type") == "joined":
                        waiting.discard(frame.get("room"))
                    elif frame.get("type") == "error" and frame.get("code") == "BUS_UNAVAILABLE" and frame.get("id"):
                        await asyncio.sleep(0.2)  # a refused join: try again (this client stalls only once joined)
                        writer.write(masked_text_frame(orjson.dumps({"type": "join", "room": frame["id"],
                                                                     "id": frame["id"]})))
                    elif frame.get("type") == "error":
                        raise ConnectionError(f"join refused: {frame}")
        # From here on nobody reads `reader`: the stall.

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None
