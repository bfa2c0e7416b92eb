"""The Python client SDK: rooms over a ringcast cluster, with placement and reconnects handled.

Owns one application-side connection: asking the route service where the
connection's rooms live, connecting (JSON or msgpack), joining, publishing,
yielding delivered messages, and surviving the loss of its worker:
reconnecting on its own with jittered exponential backoff (`router.backoff`),
re-joining its rooms, following the server's `moved` and `reconnect` hints
(honouring `delayMs`), and reporting every connection state change.

    async with Client("http://127.0.0.1:8800") as client:
        await client.join("lobby")
        await client.publish("lobby", "hi")
        async for message in client:
            print(message["room"], message["seq"], message.get("text"))

Placement of a connection: one client holds one WebSocket; it is placed by its
*home room*, the smallest of its room names (the same rule workers use when
they steer connections). A `moved` hint is followed only for the home room;
hints for other rooms are recorded (`last_moved`) and ignored, since those
rooms are served correctly wherever the connection is.

It keeps, per room, the last stream position (`seq`, `epoch`) it saw
(`position(room)`), and every re-join (after a reconnect, a `moved` or a
`reconnect` hint) carries it as `since`, so the server replays what was missed
in order (see docs/protocol.md, "Delivery promise"). Messages at or before the
position (same epoch) are dropped as duplicates (`duplicates_dropped`). When a
resume cannot be complete, the iterator yields that room's `joined` frame
(`recovered: false`, `reason`) at the very place of the gap, and
`unrecovered` records it; `resume=False` turns all of this off.

Publishing is at most once from the SDK's side: a publish that was in flight
when the connection dropped fails with `ConnectionLost` and is not retried
(the caller knows whether a retry is safe).

It must not hash rooms (the route service answers) nor share state between
`Client` objects; it never spawns threads.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote

import aiohttp
import msgpack
import orjson

from router.backoff import BackoffPolicy

log = logging.getLogger("ringcast.client")

JSON = "json"
MSGPACK = "msgpack"
_SUBPROTOCOL = {JSON: "ringcast.json", MSGPACK: "ringcast.msgpack"}
_BUS_UNAVAILABLE = "BUS_UNAVAILABLE"
_MAX_STATE_EVENTS = 256  # state changes buffered per `states()` iterator; the oldest is dropped past it


class ConnectionState(str, enum.Enum):
    IDLE = "idle"  # no room joined yet: nothing to connect to
    CONNECTING = "connecting"  # asking the router, opening the socket, waiting for `welcome`
    CONNECTED = "connected"  # `welcome` received and every room's (re-)join sent; publishes go out
    WAITING = "waiting"  # disconnected; waiting `delay_s` (backoff or a hint's delay) before the next attempt
    CLOSED = "closed"  # closed by the application; final


@dataclass(frozen=True, slots=True)
class StateChange:
    state: ConnectionState
    reason: str  # e.g. "connected", "lookup_failed", "connect_failed", "connection_lost", "moved", "reconnect:drain"
    url: str | None = None  # the worker connected to / about to be tried (None: ask the router)
    attempt: int = 0  # consecutive failed attempts behind this change
    delay_s: float = 0.0  # WAITING: seconds until the next attempt


@dataclass(frozen=True, slots=True)
class Position:
    seq: int
    epoch: str


class ClientError(Exception):
    """Base of every error the SDK raises."""


class ServerError(ClientError):
    """The server answered a request with an `error` frame (docs/protocol.md lists the codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(ClientError):
    """The connection dropped while the request was in flight; it may or may not have happened."""


class ClientClosed(ClientError):
    """The client was closed."""


class _LookupFailed(Exception):
    pass


@dataclass
class _Hint:
    url: str | None  # None: ask the router
    delay_s: float
    reason: str


@dataclass
class _Room:
    waiter: asyncio.Future | None = None  # the application's pending join(), if any
    joined_once: bool = False
    sent_generation: int = -1  # the connection generation a join was last sent on
    position: Position | None = None


@dataclass
class _Pending:
    kind: str  # "join", "leave", "publish"
    room: str
    future: asyncio.Future | None = None


_MISSING = object()


class Client:
    """One resilient connection to a ringcast cluster. Use as `async with Client(...) as c:`."""

    def __init__(
        self,
        router_url: str,
        *,
        codec: str = JSON,
        backoff: BackoffPolicy = BackoffPolicy(),
        on_state: Callable[[StateChange], None] | None = None,
        resume: bool = True,
        request_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        ping_interval_s: float | None = 20.0,
        max_pending_messages: int = 10_000,
        max_moved_follows: int = 3,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """
        router_url: base URL of a route service or of any worker (both answer GET /route).
        codec: "json" (text frames) or "msgpack" (binary frames).
        backoff: reconnect schedule; default 1 s doubling to a 30 s cap, 30 % jitter.
        on_state: called (synchronously, on the event loop) with every StateChange.
        resume: re-join with `since` = the last position seen, so missed messages are replayed
            (and duplicates dropped); False re-joins at the live position.
        request_timeout_s: longest join()/publish()/leave() wait, including waiting for a connection.
        connect_timeout_s: longest a route lookup, a WebSocket handshake or the `welcome` may take.
        ping_interval_s: WebSocket ping period to notice a dead peer; None disables it.
        max_pending_messages: delivered messages buffered for `async for`; past it the reader
            stops reading (the server then sees a slow consumer) instead of growing memory.
        max_moved_follows: `moved` hints followed in a row at one ring epoch (guards against
            two workers that disagree about the ring sending the client back and forth).
        rand: source of randomness for the backoff jitter (tests inject a seeded one).
        """
        if codec not in _SUBPROTOCOL:
            raise ValueError(f"codec must be {JSON!r} or {MSGPACK!r}")
        self.router_url = router_url.rstrip("/")
        self.codec = codec
        self.backoff = backoff
        self.resume = resume
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ping_interval_s = ping_interval_s
        self.max_moved_follows = max_moved_follows
        self._rand = rand
        self._on_state = on_state
        self._state = StateChange(ConnectionState.IDLE, "created")
        self._state_queues: list[deque[StateChange]] = []
        self._state_wakeups: list[asyncio.Event] = []
        self._rooms: dict[str, _Room] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._generation = 0
        self._messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(max_pending_messages)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._rooms_changed = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._closed = False
        self._moved_follows = 0
        self._moved_epoch = -1
        self._ring_epoch = -1  # newest ring epoch seen (route answers, followed hints): older hints are stale
        self.url: str | None = None  # the worker currently connected to
        self.worker_id: str | None = None  # its shard id, from `welcome`
        self.last_moved: dict[str, dict[str, Any]] = {}  # room -> the last `moved` frame for it
        self.duplicates_dropped = 0  # messages at or before a room's position, not yielded
        self.unrecovered: dict[str, dict[str, Any]] = {}  # room -> the last `joined` with recovered: false

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> "Client":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.connect_timeout_s))
        self._runner = asyncio.create_task(self._run(), name="ringcast-client")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave the cluster: close the socket, stop reconnecting, end `async for`."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self._fail_pending(ClientClosed("client closed"))
        for room in self._rooms.values():
            if room.waiter is not None and not room.waiter.done():
                room.waiter.set_exception(ClientClosed("client closed"))
        self._set_state(ConnectionState.CLOSED, "closed")
        try:
            self._messages.put_nowait(None)
        except asyncio.QueueFull:
            pass  # the iterator sees _closed once it drains the queue

    # --- application API ----------------------------------------------------------------

    @property
    def state(self) -> StateChange:
        return self._state

    @property
    def rooms(self) -> list[str]:
        return sorted(self._rooms)

    def position(self, room: str) -> Position | None:
        """The last (seq, epoch) seen in `room`: from its `joined` or its latest message."""
        state = self._rooms.get(room)
        return state.position if state is not None else None

    async def join(self, room: str) -> dict[str, Any]:
        """Join `room` (it is re-joined after every reconnect) and return the `joined` frame."""
        self._check_open()
        if room in self._rooms:
            raise ValueError(f"already joined {room!r}")
        waiter = asyncio.get_running_loop().create_future()
        self._rooms[room] = _Room(waiter=waiter)
        self._rooms_changed.set()
        if self._connected.is_set():
            try:
                await self._send_join(room)
            except ConnectionLost:
                pass  # the connection loop joins it on the next connection
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await asyncio.shield(waiter)
        except TimeoutError:
            self._rooms.pop(room, None)
            raise

    async def leave(self, room: str) -> None:
        """Leave `room`; it is no longer re-joined."""
        self._check_open()
        if self._rooms.pop(room, None) is None:
            raise ValueError(f"not joined {room!r}")
        if self._connected.is_set():
            await self._request({"type": "leave", "room": room}, "leave", room)

    async def publish(self, room: str, text: str | None = None, *, data: Any = _MISSING) -> dict[str, Any]:
        """Publish `text` (or any JSON-able `data`) to a joined room; returns the server's `ack`."""
        self._check_open()
        if (text is None) == (data is _MISSING):
            raise ValueError("give exactly one of text or data")
        frame: dict[str, Any] = {"type": "message", "room": room}
        if text is not None:
            frame["text"] = text
        else:
            frame["data"] = data
        return await self._request(frame, "publish", room)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed and self._messages.empty():
            raise StopAsyncIteration
        message = await self._messages.get()
        if message is None:
            raise StopAsyncIteration
        return message

    async def states(self) -> AsyncIterator[StateChange]:
        """Every state change from now on, until the client closes (bounded buffer)."""
        buffered: deque[StateChange] = deque(maxlen=_MAX_STATE_EVENTS)
        wakeup = asyncio.Event()
        self._state_queues.append(buffered)
        self._state_wakeups.append(wakeup)
        try:
            while True:
                while buffered:
                    change = buffered.popleft()
                    yield change
                    if change.state is ConnectionState.CLOSED:
                        return
                if self._closed:
                    return
                wakeup.clear()
                await wakeup.wait()
        finally:
            self._state_queues.remove(buffered)
            self._state_wakeups.remove(wakeup)

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        async with asyncio.timeout(timeout_s if timeout_s is not None else self.request_timeout_s):
            await self._connected.wait()

    # --- the connection loop ----------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        next_url: str | None = None
        while not self._closed:
            if not self._rooms:
                self._set_state(ConnectionState.IDLE, "no_rooms")
                self._rooms_changed.clear()
                await self._rooms_changed.wait()
                continue
            self._set_state(ConnectionState.CONNECTING, "connecting", next_url, attempt)
            hint: _Hint | None = None
            reason = "connection_lost"
            try:
                url = next_url or await self._lookup()
                next_url = None
                hint = await self._connection(url)
                attempt = 0  # the connection worked; a later failure starts the schedule over
            except _LookupFailed as exc:
                reason = "lookup_failed"
                log.info("route lookup failed: %s", exc)
            except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError, ValueError, ClientError) as exc:
                reason = "connect_failed" if self.url is None else "connection_lost"
                log.info("connection failed: %r", exc)
            finally:
                self._connected.clear()
                self._ws = None
                self.url = None
                self._fail_pending(ConnectionLost("connection lost"))
            if self._closed:
                return
            if hint is None or hint.reason != "moved":
                self._moved_follows = 0  # the bound is on moves in a row
            if hint is not None:
                delay_s, next_url, reason = hint.delay_s, hint.url, hint.reason
            else:
                delay_s = self.backoff.delay_s(attempt, self._rand)
                attempt += 1
            self._set_state(ConnectionState.WAITING, reason, next_url, attempt, delay_s)
            if delay_s > 0:
                await asyncio.sleep(delay_s)

    async def _lookup(self) -> str:
        """Ask the router where the home room lives."""
        assert self._session is not None
        home = min(self._rooms)
        url = f"{self.router_url}/route?room={quote(home, safe='')}"
        try:
            async with self._session.get(url) as response:
                body = await response.json(loads=orjson.loads, content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise _LookupFailed(f"{url}: {exc!r}") from None
        if response.status != 200 or not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise _LookupFailed(f"{url}: HTTP {response.status} {body!r}")
        if isinstance(body.get("epoch"), int):
            self._ring_epoch = max(self._ring_epoch, body["epoch"])
        return body["url"]

    async def _connection(self, url: str) -> _Hint | None:
        """One WebSocket's life: connect, welcome, re-join, read until it ends; returns the hint it left."""
        assert self._session is not None
        self.url = None
        ws = await self._session.ws_connect(
            url,
            protocols=(_SUBPROTOCOL[self.codec],),
            heartbeat=self.ping_interval_s,
            autoping=True,
            max_msg_size=0,  # the server bounds its frames; the client trusts the worker it asked for
            timeout=aiohttp.ClientWSTimeout(ws_close=self.connect_timeout_s),
        )
        try:
            welcome = self._decode(await ws.receive(timeout=self.connect_timeout_s))
            if welcome.get("type") != "welcome":
                raise ConnectionError(f"expected welcome, got {welcome.get('type')!r}")
            self._generation += 1
            self._ws = ws
            self.url = url
            self.worker_id = welcome.get("workerId")
            # Re-join before publishes may go out: the worker handles one connection's frames in
            # order, so a publish sent after its room's join never meets NOT_JOINED.
            for room in sorted(self._rooms):
                await self._send_join(room)
            self._connected.set()
            self._set_state(ConnectionState.CONNECTED, "connected", url)
            for room in sorted(self._rooms):  # rooms join() added while the loop above awaited
                await self._send_join(room)
            return await self._read(ws)
        finally:
            if not ws.closed:
                await ws.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> _Hint | None:
        hint: _Hint | None = None
        while True:
            msg = await ws.receive()
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return hint
            frame = self._decode(msg)
            kind = frame.get("type")
            if kind == "message":
                if not self._note_position(frame):
                    self.duplicates_dropped += 1
                    continue
                await self._messages.put(frame)  # blocks when full: backpressure, not memory growth
            elif kind == "joined" and frame.get("recovered") is False:
                self.unrecovered[str(frame.get("room"))] = frame
                self._on_reply(frame)
                await self._messages.put(frame)  # the gap's place in the stream
            elif kind == "reconnect":
                url = frame.get("url") if isinstance(frame.get("url"), str) else None
                delay_s = max(0, int(frame.get("delayMs") or 0)) / 1000
                hint = _Hint(url, delay_s, f"reconnect:{frame.get('reason', '')}")
                # The worker closes the socket next; keep reading what it still sends.
            elif kind == "moved":
                moved = self._follow_moved(frame)
                if moved is not None:
                    return moved
            else:
                self._on_reply(frame)

    def _follow_moved(self, frame: dict[str, Any]) -> _Hint | None:
        room, url, epoch = frame.get("room"), frame.get("url"), frame.get("epoch")
        if not isinstance(room, str) or not isinstance(url, str):
            return None
        self.last_moved[room] = frame
        if not self._rooms or room != min(self._rooms) or url == self.url:
            return None
        ring_epoch = epoch if isinstance(epoch, int) else -1
        if ring_epoch < self._ring_epoch:
            # A worker that has not caught up with the ring yet: the router already knew better.
            log.info("ignoring stale moved to %s (ring epoch %s < %d)", url, epoch, self._ring_epoch)
            return None
        if ring_epoch > self._moved_epoch:
            self._moved_epoch, self._moved_follows = ring_epoch, 0
        if self._moved_follows >= self.max_moved_follows:
            log.warning("ignoring moved to %s: followed %d in a row at ring epoch %s", url, self._moved_follows, epoch)
            return None
        self._moved_follows += 1
        self._ring_epoch = max(self._ring_epoch, ring_epoch)
        return _Hint(url, 0.0, "moved")

    def _on_reply(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "joined":
            room = self._rooms.get(frame.get("room"))  # type: ignore[arg-type]
            if room is not None:
                room.joined_once = True
                if isinstance(frame.get("seq"), int):
                    self._on_joined_position(room, Position(frame["seq"], str(frame.get("epoch", ""))))
                if room.waiter is not None and not room.waiter.done():
                    room.waiter.set_result(frame)
                room.waiter = None
        request_id = frame.get("id")
        if not isinstance(request_id, int):
            return
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        if kind == "error":
            self._on_request_error(pending, str(frame.get("code")), str(frame.get("message", "")))
        elif pending.future is not None and not pending.future.done():
            pending.future.set_result(frame)

    def _on_request_error(self, pending: _Pending, code: str, message: str) -> None:
        error = ServerError(code, message)
        if pending.kind == "join":
            room = self._rooms.get(pending.room)
            if room is None:
                return
            if code == _BUS_UNAVAILABLE and room.joined_once:
                # A re-join the bus could not do: keep the room, try again on a fresh connection.
                if self._ws is not None:
                    asyncio.ensure_future(self._ws.close())
                return
            del self._rooms[pending.room]
            if room.waiter is not None and not room.waiter.done():
                room.waiter.set_exception(error)
            else:
                log.warning("could not re-join %s: %s", pending.room, error)
            return
        if pending.future is not None and not pending.future.done():
            pending.future.set_exception(error)

    # --- frames ------------------------------------------------------------------------------

    def _join_frame(self, room: str) -> dict[str, Any]:
        """The join for `room`; the resume hook: with `resume`, carry the last position as `since`."""
        frame: dict[str, Any] = {"type": "join", "room": room}
        position = self._rooms[room].position
        if self.resume and position is not None:
            frame["since"] = {"seq": position.seq, "epoch": position.epoch}
        return frame

    async def _send_join(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is None or state.sent_generation == self._generation:
            return  # already sent on this connection
        state.sent_generation = self._generation
        frame = self._join_frame(room)
        frame["id"] = self._register(_Pending("join", room))
        await self._send(frame)

    async def _request(self, frame: dict[str, Any], kind: str, room: str) -> dict[str, Any]:
        async with asyncio.timeout(self.request_timeout_s):
            await self._connected.wait()
            future = asyncio.get_running_loop().create_future()
            request_id = frame["id"] = self._register(_Pending(kind, room, future))
            try:
                await self._send(frame)
            except ConnectionLost:
                self._pending.pop(request_id, None)
                raise
            return await future

    def _register(self, pending: _Pending) -> int:
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = pending
        return request_id

    async def _send(self, frame: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionLost("not connected")
        try:
            if self.codec == MSGPACK:
                await ws.send_bytes(msgpack.packb(frame, use_bin_type=True))
            else:
                await ws.send_str(orjson.dumps(frame).decode())
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ConnectionLost(str(exc)) from None

    def _decode(self, msg: aiohttp.WSMessage) -> dict[str, Any]:
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame = orjson.loads(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            frame = msgpack.unpackb(msg.data, raw=False)
        else:
            raise ConnectionError(f"socket closed ({msg.type.name})")
        if not isinstance(frame, dict):
            raise ConnectionError("server sent a frame that is not an object")
        return frame

    def _note_position(self, frame: dict[str, Any]) -> bool:
        """Advance the room's position; False for a message at or before it (a duplicate)."""
        room = self._rooms.get(frame.get("room"))  # type: ignore[arg-type]
        if room is None or not isinstance(frame.get("seq"), int):
            return True
        return self._advance(room, Position(frame["seq"], str(frame.get("epoch", ""))))

    def _on_joined_position(self, room: _Room, joined_at: Position) -> None:
        """A `joined` names where the live stream starts; on a resume the replay comes first."""
        current = room.position
        if current is None or not self.resume:
            room.position = joined_at
        elif current.epoch != joined_at.epoch:
            room.position = Position(0, joined_at.epoch)  # a new stream: its replay starts at seq 1
        # else: same stream; the replayed messages advance the position one by one

    def _advance(self, room: _Room, position: Position) -> bool:
        current = room.position
        if current is None or current.epoch != position.epoch or position.seq > current.seq:
            room.position = position
            return True
        return not self.resume

    # --- plumbing -----------------------------------------------------------------------------

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if item.future is not None and not item.future.done():
                item.future.set_exception(error)
        for room in self._rooms.values():
            room.sent_generation = -1

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("client closed")
        if self._runner is None:
            raise ClientError("use the client as `async with Client(...) as client:`")

    def _set_state(
        self, state: ConnectionState, reason: str, url: str | None = None, attempt: int = 0, delay_s: float = 0.0
    ) -> None:
        change = StateChange(state, reason, url, attempt, delay_s)
        if change == self._state:
            return
        self._state = change
        log.debug("client state %s (%s) url=%s attempt=%d delay=%.3fs", state.value, reason, url, attempt, delay_s)
        if self._on_state is not None:
            try:
                self._on_state(change)
            except Exception:  # the application's callback must not break the connection loop
                log.exception("on_state callback failed")
        for buffered, wakeup in zip(self._state_queues, self._state_wakeups):
            buffered.append(change)
            wakeup.set()
