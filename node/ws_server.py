"""A worker's sockets: WebSocket upgrades served here, every other request handed to aiohttp.

Owns two asyncio protocols:

- `FrontDoor` reads a new connection's first request head (within
  `handshake_timeout_s`, at most `HEAD_LIMIT_FACTOR * max_http_header_bytes`
  bytes). A well-formed WebSocket upgrade on `/ws` is given to the gateway
  (the worker: admission, then `WebSocketEndpoint`); anything else, bytes
  included, goes to aiohttp's protocol, which serves `/healthz`, `/metrics`,
  the HTTP API and any malformed request with its own limits and errors.
  A connection that was kept alive by aiohttp and then asks for `/ws` is
  upgraded through aiohttp's route instead (`WebSocketEndpoint.take_over`).
- `WebSocketEndpoint` is an upgraded socket: it feeds received bytes to
  `node.ws_reader`, hands each message to the gateway in order (a message
  whose handling must wait pauses reading until it is done, so a client
  cannot queue unbounded work), answers the peer's close, and runs the
  worker's close handshake (close frame, then the socket is cut if the
  peer has not answered within the grace period).

Why not aiohttp's WebSocket: it keeps the upgrade request, a handler task,
a reader and a queue alive for every connection, which is most of the
idle memory per connection and a task wake-up per received frame.

It must not decide admission, decode ringcast frames or write anything but
WebSocket control frames (close) and the bytes the gateway gives it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Protocol

from node import frames
from node.ws_handshake import END_OF_HEAD, WS_PATH, HandshakeError, RequestHead, check_upgrade, parse_head
from node.ws_reader import FrameError, FrameReader, Message

log = logging.getLogger("ringcast.ws")

HEAD_LIMIT_FACTOR = 4  # a first request head longer than 4 * max_http_header_bytes is left to aiohttp's limits
CLIENT_CLOSE_ANSWER = frames.close_frame(1000)  # a client's close is answered with 1000 (NORMAL), whatever its code
_WS_REQUEST_STARTS = (b"GET " + WS_PATH.encode() + b" ", b"GET " + WS_PATH.encode() + b"?")


class Gateway(Protocol):
    """What the sockets need from the worker."""

    async def upgrade(self, door: "FrontDoor", head: RequestHead) -> None: ...

    def on_message(self, endpoint: "WebSocketEndpoint", opcode: int, payload: str | bytes) -> Awaitable[None] | None: ...

    def on_frame_error(self, endpoint: "WebSocketEndpoint", error: FrameError) -> None: ...

    def on_closed(self, endpoint: "WebSocketEndpoint") -> None: ...


class FrontDoor(asyncio.Protocol):
    """One accepted connection until its first request head is read."""

    def __init__(self, gateway: Gateway, http_factory: Callable[[], asyncio.Protocol],
                 handshake_timeout_s: float, max_line_bytes: int) -> None:
        self.gateway = gateway
        self.http_factory = http_factory
        self.handshake_timeout_s = handshake_timeout_s
        self.max_line_bytes = max_line_bytes
        self.head_limit = HEAD_LIMIT_FACTOR * max_line_bytes
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None
        self.upgrading: asyncio.Future | None = None
        self.lost = False  # the peer went away before the socket was handed on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        self.timer = asyncio.get_running_loop().call_later(self.handshake_timeout_s, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.upgrading is not None:
            if len(self.buffer) > self.head_limit:
                self._cut()  # frames sent before the 101, past any reason
            return
        buffer = self.buffer
        if not buffer.startswith(_WS_REQUEST_STARTS):
            if len(buffer) >= len(_WS_REQUEST_STARTS[0]) or not any(s.startswith(buffer) for s in _WS_REQUEST_STARTS):
                self.hand_to_http()
            return
        end = buffer.find(END_OF_HEAD)
        if end < 0:
            if len(buffer) > self.head_limit:
                self.hand_to_http()
            return
        try:
            head = parse_head(buffer[:end], self.max_line_bytes)
            check_upgrade(head)
        except HandshakeError:
            self.hand_to_http()  # aiohttp's /ws route answers it (with the same checks)
            return
        self.buffer = buffer[end + len(END_OF_HEAD):]
        self.upgrading = asyncio.ensure_future(self.gateway.upgrade(self, head))
        self.upgrading.add_done_callback(self._upgraded)

    def _upgraded(self, done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("bug while upgrading a connection", exc_info=done.exception())
            self._cut()

    def take_tail(self) -> bytes:
        """What the client sent after its upgrade request (frames sent before the 101), handed on once."""
        tail, self.buffer = self.buffer, b""
        return tail

    def settle(self) -> None:
        """The socket is answered or handed on: the handshake timeout no longer applies."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def hand_to_http(self) -> None:
        assert self.transport is not None
        self.settle()
        inner = self.http_factory()
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)
        rest, self.buffer = self.buffer, b""
        if rest:
            inner.data_received(rest)

    def _cut(self) -> None:
        self.settle()
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        if self.upgrading is None:
            self._cut()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.settle()


class WebSocketEndpoint(asyncio.Protocol):
    """One upgraded socket: reads messages in order, runs the close handshake."""

    __slots__ = ("gateway", "transport", "reader", "conn", "busy", "backlog", "close_sent", "close_timer",
                 "ended", "previous")

    def __init__(self, gateway: Gateway, transport: asyncio.Transport, max_message_bytes: int) -> None:
        self.gateway = gateway
        self.transport = transport
        self.reader = FrameReader(max_message_bytes)
        self.conn = None  # the worker's Connection, set by the worker
        self.busy: asyncio.Future | None = None  # a message's handling being awaited: later ones wait in `backlog`
        self.backlog: list[Message] = []
        self.close_sent = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.ended: asyncio.Future | None = None  # set when taken over from aiohttp: resolved at connection_lost
        self.previous: asyncio.BaseProtocol | None = None  # aiohttp's protocol, told when the socket is lost

    def start(self, tail: bytes) -> None:
        """Become the socket's protocol; `tail` is what the client sent after its upgrade request."""
        self.transport.set_protocol(self)
        if tail:
            self.data_received(tail)

    def take_over(self, previous: asyncio.BaseProtocol, tail: bytes) -> asyncio.Future:
        """Serve a socket upgraded through aiohttp (a kept-alive connection); `tail` is what aiohttp read
        after the upgrade request. The returned future is resolved when the socket is gone, and aiohttp's
        protocol is then told it was lost."""
        self.previous = previous
        self.ended = asyncio.get_running_loop().create_future()
        self.start(tail)
        return self.ended

    # --- reading --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except FrameError as error:
            self.backlog.extend(error.messages)
            self.backlog.append((-1, error))
            if not self.busy:
                self._run()
            return
        if self.busy:
            self.backlog.extend(messages)
        elif messages:
            self.backlog = messages
            self._run()

    def _run(self) -> None:
        """Hand the backlog's messages to the gateway in order, until one must be awaited."""
        backlog = self.backlog
        gateway = self.gateway
        while backlog:
            opcode, payload = backlog.pop(0) if len(backlog) > 1 else backlog.pop()
            if opcode == -1:
                backlog.clear()
                assert isinstance(payload, FrameError)
                gateway.on_frame_error(self, payload)
                self.close(payload.close_code, payload.message, None)
                return
            if opcode == frames.OP_CLOSE:
                backlog.clear()
                self._peer_closed(payload)
                return
            pending = gateway.on_message(self, opcode, payload)
            if pending is not None:
                self.transport.pause_reading()
                self.busy = asyncio.ensure_future(self._finish(pending))
                return

    async def _finish(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception:
            log.exception("bug while handling a message")
        self.busy = None
        self._run()
        if not self.busy and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- closing ---------------------------------------------------------------------

    def close(self, code: int, reason: str, grace_s: float | None) -> None:
        """Send a close frame (after whatever was written before it); the socket is closed when the peer
        answers (and what is buffered is written), or cut `grace_s` after this call, whichever comes first
        (None: close it at once, once what is buffered is written)."""
        if self.close_sent:
            return
        self.close_sent = True
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(frames.close_frame(code, reason))
        if grace_s is None:
            transport.close()
        else:
            self.close_timer = asyncio.get_running_loop().call_later(grace_s, transport.abort)

    def _peer_closed(self, code: int) -> None:
        """The peer sent its close frame (any allowed `code`): answer it with 1000 (unless ours went first)
        and close the socket."""
        if not self.close_sent:
            self.close_sent = True
            if not self.transport.is_closing():
                self.transport.write(CLIENT_CLOSE_ANSWER)
        self.transport.close()

    def eof_received(self) -> bool:
        return False  # the peer is done sending: close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.backlog = []
        self.gateway.on_closed(self)
        self.conn = None  # no cycle with the connection left for the garbage collector
        if self.previous is not None:
            self.previous.connection_lost(exc)
            self.previous = None
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)
