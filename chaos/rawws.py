"""A deliberately rude WebSocket client: raw bytes on a TCP socket.

Owns building any client frame a real library would refuse to send (reserved
bits, unknown opcodes, unmasked, lying lengths, invalid UTF-8, fragmented
control frames), doing the upgrade by hand so a test can see the exact HTTP
answer, and reading the server's frames (close code included). Used by the
fuzzer (chaos/fuzz.py) and the security tests. It must not interpret the
ringcast protocol: that is the caller's business.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class UpgradeRefused(Exception):
    def __init__(self, answer: HttpAnswer) -> None:
        super().__init__(f"upgrade refused with HTTP {answer.status}: {answer.body[:200]!r}")
        self.answer = answer


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True, claimed_length: int | None = None
) -> bytes:
    """One client frame; `claimed_length` lets the header lie about the payload size."""
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    length = len(payload) if claimed_length is None else claimed_length
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload)) if len(payload) < 256 else _mask_fast(payload, key)
    return header + key + body


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def upgrade_request(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_http_answer(reader: asyncio.StreamReader) -> HttpAnswer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = b""
    if status != 101 and "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return HttpAnswer(status, headers, body)


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: HttpAnswer) -> None:
        self.reader = reader
        self.writer = writer
        self.answer = answer

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str = "/ws", headers: dict[str, str] | None = None, timeout_s: float = 10.0
    ) -> "RawWebSocket":
        """Upgrade, or raise UpgradeRefused carrying the HTTP answer."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        try:
            writer.write(upgrade_request(host, port, path, headers))
            answer = await asyncio.wait_for(read_http_answer(reader), timeout_s)
        except BaseException:
            writer.close()
            raise
        if answer.status != 101:
            writer.close()
            raise UpgradeRefused(answer)
        return cls(reader, writer, answer)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, opcode: int, payload: bytes, **kwargs) -> None:
        self.writer.write(client_frame(opcode, payload, **kwargs))

    async def recv(self, timeout_s: float = 10.0) -> tuple[int, bytes]:
        """The next whole server frame as (opcode, payload); EOF raises IncompleteReadError."""
        async with asyncio.timeout(timeout_s):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            return first & 0x0F, payload

    async def recv_close(self, timeout_s: float = 10.0) -> int:
        """Skip data frames until the server's close frame; return its code (1005 if it has none)."""
        while True:
            opcode, payload = await self.recv(timeout_s)
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    async def at_eof(self, timeout_s: float = 10.0) -> bool:
        """True once the server has closed the TCP connection (EOF or reset; reads until then)."""
        async with asyncio.timeout(timeout_s):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionResetError:  # closed with our unread frames in its buffer: RST
                pass
        return True

    def close(self) -> None:
        self.writer.close()


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason
