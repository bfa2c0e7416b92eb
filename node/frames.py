"""Server-to-client WebSocket frames as ready-to-write bytes (RFC 6455). No I/O.

Owns building whole unmasked frames so that fan-out can encode a message once
and write the very same bytes to every member's socket, and a queue of them
can go out in one `write`. It must not parse client frames: `node.ws_reader`
does that (with the frame-size limit enforced before buffering).
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frame(payload: bytes, opcode: int) -> bytes:
    """One final (FIN) unmasked frame carrying `payload`."""
    size = len(payload)
    first = _FIN | opcode
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _LEN16.pack(first, 126, size) + payload
    return _LEN64.pack(first, 127, size) + payload


def data_frame(payload: bytes, binary: bool) -> bytes:
    return frame(payload, OP_BINARY if binary else OP_TEXT)


def close_frame(code: int, reason: str = "") -> bytes:
    body = struct.pack("!H", code) + reason.encode("utf-8")[:120]
    return frame(body, OP_CLOSE)


PING = frame(b"", OP_PING)


def pong(payload: bytes) -> bytes:
    return frame(payload[:125], OP_PONG)
