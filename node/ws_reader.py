"""Client-to-server WebSocket frames, read from bytes (RFC 6455). No I/O.

Owns reading what a client sends on an upgraded socket: frame headers,
unmasking, reassembling a fragmented message, and the rules every frame must
follow. A broken rule is a `FrameError` carrying the close code to answer
with:

- 1002 (PROTOCOL_ERROR): reserved bits set (no extension is negotiated), an
  unknown opcode, an unmasked frame, a control frame that is fragmented or
  longer than 125 bytes, a continuation without a message to continue, a new
  message before the last one ended, a one-byte close payload or a close code
  that may not be sent;
- 1007 (INVALID_PAYLOAD): a text message or close reason that is not UTF-8;
- 1009 (MESSAGE_TOO_BIG): a message (all its fragments together) longer than
  `max_message_bytes`, refused from the frame header, before its payload is
  buffered.

So what a reader holds is bounded by one frame header plus
`max_message_bytes`. It must not write anything nor know what a message
means: `node.ws_server` feeds it and acts on what it returns.
"""

from __future__ import annotations

from typing import Union

from node.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

OP_CONTINUATION = 0x0
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009
NO_STATUS = 1005  # what a close frame without a code means (it is never sent on the wire)
# Close codes a peer may send below 3000 (RFC 6455 section 7.4.1; 1004-1006 and 1015 are reserved).
_SENDABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

Message = tuple[int, Union[str, bytes, int]]  # (opcode, payload); a close's payload is its code


class FrameError(Exception):
    """The client broke the framing rules; close the connection with `close_code`."""

    def __init__(self, close_code: int, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.message = message
        self.messages: list[Message] = []  # the whole messages read before the broken rule, in order


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR `payload` with the 4-byte `mask` repeated (done as one big-integer XOR: no loop per byte)."""
    size = len(payload)
    key = (mask * ((size >> 2) + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


class FrameReader:
    """One connection's reading state: bytes not yet a whole frame, and the fragments of an unfinished message."""

    __slots__ = ("max_message_bytes", "_buffer", "_fragments", "_fragment_opcode", "_fragment_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_bytes = 0

    def feed(self, data: bytes) -> list[Message]:
        """Read `data`; return the messages it completes, in order: (OP_TEXT, str), (OP_BINARY, bytes),
        (OP_PING, bytes), (OP_PONG, bytes) and (OP_CLOSE, code). Raises FrameError at the first broken rule."""
        buf = self._buffer + data if self._buffer else data
        end = len(buf)
        pos = 0
        out: list[Message] = []
        try:
            pos = self._read(buf, pos, end, out)
        except FrameError as error:
            self._buffer = b""
            error.messages = out
            raise
        self._buffer = buf[pos:] if pos < end else b""
        return out

    def _read(self, buf: bytes, pos: int, end: int, out: list[Message]) -> int:
        """Append the messages in buf[pos:end] to `out`; return where the first incomplete frame starts."""
        while end - pos >= 2:
            first = buf[pos]
            second = buf[pos + 1]
            if first & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
            opcode = first & 0x0F
            final = first & 0x80
            length = second & 0x7F
            header = 6
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                header = 8
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                header = 14
            self._check(opcode, final, length)
            if end - pos < header + length:
                break
            start = pos + header
            payload = buf[start:start + length]
            if length:
                payload = unmask(payload, buf[start - 4:start])
            pos = start + length
            message = self._message(opcode, final, payload)
            if message is not None:
                out.append(message)
        return pos

    def _check(self, opcode: int, final: int, length: int) -> None:
        """The rules a frame header must follow, checked before its payload is waited for."""
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not final or length > 125:
                raise FrameError(PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise FrameError(PROTOCOL_ERROR, "a continuation frame without a message to continue")
            if self._fragment_bytes + length > self.max_message_bytes:
                raise FrameError(MESSAGE_TOO_BIG, f"message larger than {self.max_message_bytes} bytes")
            return
        if opcode not in (OP_TEXT, OP_BINARY):
            raise FrameError(PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")
        if self._fragments is not None:
            raise FrameError(PROTOCOL_ERROR, "a new message before the fragmented one ended")
        if length > self.max_message_bytes:
            raise FrameError(MESSAGE_TOO_BIG, f"message larger than {self.max_message_bytes} bytes")

    def _message(self, opcode: int, final: int, payload: bytes) -> Message | None:
        if opcode >= 0x8:
            if opcode == OP_CLOSE:
                return OP_CLOSE, _close_code(payload)
            return opcode, payload
        if opcode == OP_CONTINUATION:
            assert self._fragments is not None
            self._fragments.append(payload)
            self._fragment_bytes += len(payload)
            if not final:
                return None
            opcode, payload = self._fragment_opcode, b"".join(self._fragments)
            self._fragments = None
            self._fragment_bytes = 0
        elif not final:
            self._fragments = [payload]
            self._fragment_opcode = opcode
            self._fragment_bytes = len(payload)
            return None
        if opcode == OP_TEXT:
            try:
                return OP_TEXT, payload.decode("utf-8")
            except UnicodeDecodeError:
                raise FrameError(INVALID_PAYLOAD, "a text message that is not UTF-8") from None
        return OP_BINARY, payload


def _close_code(payload: bytes) -> int:
    """The code of a close frame's payload (NO_STATUS when it has none), after checking the payload."""
    if not payload:
        return NO_STATUS
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "a close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if code < 3000 and code not in _SENDABLE_CLOSE_CODES or code >= 5000:
        raise FrameError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(INVALID_PAYLOAD, "a close reason that is not UTF-8") from None
    return code
