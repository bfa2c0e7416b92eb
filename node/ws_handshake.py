"""The WebSocket opening handshake, server side (RFC 6455 section 4.2). No I/O.

Owns reading an HTTP/1.1 request head (request line and headers) out of a
connection's first bytes, checking that it is a WebSocket upgrade, choosing
the subprotocol, and building the two answers a worker writes itself: the
101 that accepts an upgrade and the plain HTTP refusal.

It must not decide who may connect (`node.admission` does) nor serve any
other HTTP (aiohttp does: `node.ws_server` hands it every request that is
not a well-formed upgrade, which answers it with its own limits and errors).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs

WS_PATH = "/ws"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
END_OF_HEAD = b"\r\n\r\n"


class HandshakeError(ValueError):
    """The request is not a WebSocket upgrade this server accepts; answer `status` with `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class RequestHead:
    """An upgrade request's line and headers, as read off the socket."""

    method: str
    path: str  # without the query string
    query: str  # the raw query string ("" when there is none)
    headers: list[tuple[str, str]]  # (lower-cased name, value), in order
    version: str = "HTTP/1.1"

    def get(self, name: str) -> str | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def getall(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def query_param(self, name: str) -> str | None:
        values = parse_qs(self.query, keep_blank_values=True).get(name) if self.query else None
        return values[0] if values else None


def parse_head(head: bytes, max_line_bytes: int) -> RequestHead:
    """Read a request head (everything before its blank line). Raises HandshakeError(400) when it is not
    one, or when a line of it is longer than `max_line_bytes`."""
    try:
        text = head.decode("latin-1")
        request_line, *lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HandshakeError(400, "malformed request line") from None
    if len(request_line) > max_line_bytes or any(len(line) > max_line_bytes for line in lines):
        raise HandshakeError(400, f"a request or header line longer than {max_line_bytes} bytes")
    if version != "HTTP/1.1":
        raise HandshakeError(400, "a WebSocket upgrade needs HTTP/1.1")
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or any(c in name for c in " \t"):
            raise HandshakeError(400, "malformed header line")
        headers.append((name.lower(), value.strip(" \t")))
    return RequestHead(method, path, query, headers, version)


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in value.split(",")} if value else set()


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def check_upgrade(head: RequestHead) -> None:
    """Raise HandshakeError unless `head` is a WebSocket upgrade this server accepts: an HTTP/1.1 GET
    without a body, WebSocket version 13, a valid key."""
    if head.method != "GET":
        raise HandshakeError(405, "a WebSocket upgrade is a GET")
    if head.version != "HTTP/1.1":
        raise HandshakeError(400, "a WebSocket upgrade needs HTTP/1.1")
    if head.get("content-length") not in (None, "0") or head.get("transfer-encoding") is not None:
        raise HandshakeError(400, "a WebSocket upgrade request has no body")
    if "websocket" not in _tokens(head.get("upgrade")):
        raise HandshakeError(400, "not a WebSocket upgrade: Upgrade: websocket is missing")
    if "upgrade" not in _tokens(head.get("connection")):
        raise HandshakeError(400, "not a WebSocket upgrade: Connection: Upgrade is missing")
    if head.get("sec-websocket-version") != "13":
        raise HandshakeError(426, "only WebSocket version 13 is spoken")
    key = head.get("sec-websocket-key") or ""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except ValueError:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64") from None


def choose_subprotocol(head: RequestHead, supported: tuple[str, ...]) -> str | None:
    """The first subprotocol the client offers that the server speaks (None: none offered or none spoken)."""
    for value in head.getall("sec-websocket-protocol"):
        for offered in value.split(","):
            if offered.strip() in supported:
                return offered.strip()
    return None


def switching_protocols(head: RequestHead, subprotocol: str | None) -> bytes:
    """The 101 answer to an upgrade `check_upgrade` accepted."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(head.get('sec-websocket-key') or '')}",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_answer(status: int, body: bytes, headers: dict[str, str], content_type: str = "application/json; charset=utf-8") -> bytes:
    """A whole HTTP/1.1 answer that ends the connection (Connection: close)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
