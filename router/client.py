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
rooms are served correctly wherever the connection is. A host that went
silent (no pong within the heartbeat, or a connect that timed out) is not
returned to on a `moved` hint until a newer ring epoch names it again, or a
connection to it opens: the worker that sends the hint may not have learnt yet
that the host is gone.

It keeps, per room, the last stream position (`seq`, `epoch`) it saw
(`position(room)`), and every re-join (after a reconnect, a `moved` or a
`reconnect` hint) carries it as `since`, so the server replays what was missed
in order (see docs/protocol.md, "Delivery promise"). Messages at or before the
position (same epoch) are dropped as duplicates (`duplicates_dropped`). When a
resume cannot be complete, the iterator yields that room's `joined` frame
(`recovered: false`, `reason`) at the very place of the gap, and
`unrecovered` records it; `resume=False` turns all of this off.

Tokens: with auth on, the client sends its token (`token`, or what
`get_token()` returns) as `Authorization: Bearer` on every connect. While
connected it refreshes the token in place before its `exp` (a `refresh`
frame: the socket and its rooms stay), and after a 401 at the upgrade or a
4001 close (token expired) it calls `get_token()` before connecting again.
Without `get_token`, a refused token ends the client with
`AuthenticationFailed`, raised to the application, instead of retrying.

Publishing is at most once from the SDK's side: a publish that was in flight
when the connection dropped fails with `ConnectionLost` and is not retried
(the caller knows whether a retry is safe), unless it carries an idempotency
key (`publish(..., idempotency_key=K)` or `retry=True`): then it is retried,
bounded, after ConnectionLost, PUBLISH_UNCONFIRMED or BUS_UNAVAILABLE, and the
server publishes it at most once.

The protocol state (frames, request ids, positions, duplicates, resume,
hint policy, the `refresh` frame) lives in `router.client_core.ClientCore`;
this module only moves bytes, keeps time (backoff, when to refresh a token)
and wakes the application up. It must not hash
rooms (the route service answers) nor share state between `Client`
objects; it never spawns threads.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import aiohttp
import msgpack
import orjson

from router.backoff import BackoffPolicy
from router.client_core import (
    AuthenticationFailed,
    ClientClosed,
    ClientCore,
    ClientError,
    MISSING,
    ConnectionLost,
    Gap,
    Joined,
    Message,
    Position,
    PresenceDiff,
    Reconnect,
    Reply,
    Request,
    RequestFailed,
    ServerError,
    TooManyRequests,
    token_expiry,
)

__all__ = [
    "AuthenticationFailed", "Client", "ClientClosed", "ClientError", "ConnectionLost", "ConnectionState", "Position",
    "ServerError", "StateChange", "TooManyRequests",
]

log = logging.getLogger("ringcast.client")

JSON = "json"
MSGPACK = "msgpack"
_SUBPROTOCOL = {JSON: "ringcast.json", MSGPACK: "ringcast.msgpack"}
_MAX_STATE_EVENTS = 256  # state changes buffered per `states()` iterator; the oldest is dropped past it
TOKEN_EXPIRED_CLOSE_CODE = 4001  # docs/protocol.md: the worker closes a connection whose token expired
UNAUTHORIZED_STATUS = 401  # the worker refused the upgrade's token
# A token living less than twice refresh_before_s is refreshed at half of what is left of it when it is
# taken into use (a 5 s token: 2.5 s before its `exp`), so short tokens still leave time for a retry.
SHORT_TOKEN_REFRESH_SHARE = 0.5
REFRESH_ATTEMPTS = 3  # a refresh (get_token + `refresh` + `refreshed`) tried this many times before giving up
PUBLISH_ATTEMPTS = 3  # tries of a publish with an idempotency key (retried after the codes below or ConnectionLost)
RETRYABLE_PUBLISH_CODES = frozenset({"PUBLISH_UNCONFIRMED", "BUS_UNAVAILABLE"})
# State reasons of the token's life (StateChange.reason):
REASON_TOKEN_REFRESHED = "token_refreshed"  # CONNECTED: the worker took the new token, the socket stayed
REASON_TOKEN_REFRESH_FAILED = "token_refresh_failed"  # CONNECTED: one refresh attempt failed (`attempt`: which)
REASON_UNAUTHORIZED = "auth_failed:unauthorized"  # WAITING (get_token) or CLOSED (none): HTTP 401 at the upgrade
REASON_TOKEN_EXPIRED = "auth_failed:token_expired"  # WAITING (get_token) or CLOSED (none): closed 4001
REASON_TOKEN_UNAVAILABLE = "token_unavailable"  # WAITING: get_token() raised or returned no token


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


def _no_answer(exc: BaseException) -> bool:
    """A connect that got no answer at all (a timeout, no route to the host), as opposed to a refusal or an
    HTTP error: the host, or the link to it, may be gone."""
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return True
    os_error = getattr(exc, "os_error", exc)
    return isinstance(os_error, OSError) and os_error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)


class _LookupFailed(Exception):
    pass


class _TokenUnavailable(Exception):
    pass


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
        max_pending_requests: int = 1_000,
        max_moved_follows: int = 3,
        rand: Callable[[], float] = random.random,
        token: str | None = None,
        get_token: Callable[[], Awaitable[str]] | None = None,
        refresh_before_s: float = 30.0,
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
        max_pending_requests: publishes/leaves awaiting their reply; past it publish() raises
            TooManyRequests at once instead of queueing without bound.
        max_moved_follows: `moved` hints followed in a row at one ring epoch (guards against
            two workers that disagree about the ring sending the client back and forth).
        rand: source of randomness for the backoff jitter (tests inject a seeded one).
        token: the connection token (a JWT), sent as `Authorization: Bearer` on every connect;
            None with get_token: get_token() is called before the first connect.
        get_token: coroutine function returning a fresh token within request_timeout_s; called to
            refresh the token before its `exp`, and before connecting again after a 401 or a 4001
            close. None: a refused token ends the client with AuthenticationFailed.
        refresh_before_s: refresh this many seconds before the token's `exp` (by this machine's
            clock), or at half of its remaining life when that is shorter; 0 disables refreshing
            in place (the connection then ends 4001 at `exp` and reconnects with get_token()).
        """
        if codec not in _SUBPROTOCOL:
            raise ValueError(f"codec must be {JSON!r} or {MSGPACK!r}")
        if refresh_before_s < 0:
            raise ValueError("refresh_before_s must be >= 0")
        self.router_url = router_url.rstrip("/")
        self.codec = codec
        self.backoff = backoff
        self.resume = resume
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ping_interval_s = ping_interval_s
        self.max_moved_follows = max_moved_follows
        self._core = ClientCore(resume=resume, max_moved_follows=max_moved_follows,
                                max_pending_requests=max_pending_requests)
        self._rand = rand
        self._on_state = on_state
        self._state = StateChange(ConnectionState.IDLE, "created")
        self._state_queues: list[deque[StateChange]] = []
        self._state_wakeups: list[asyncio.Event] = []
        self._join_waiters: dict[str, asyncio.Future] = {}  # room -> the application's pending join()
        self._messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(max_pending_messages)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()  # frames leave in the order the core queued them
        self._connected = asyncio.Event()
        self._rooms_changed = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._closed = False
        self.url: str | None = None  # the worker currently connected to
        self.worker_id: str | None = None  # its shard id, from `welcome`
        self.connection_id: str | None = None  # the worker's id of the current (or last) socket, from `welcome`
        self.refresh_before_s = refresh_before_s
        self.token_refreshes = 0  # tokens the worker took in place (`refreshed`)
        self._token = token
        self._get_token = get_token
        self._token_stale = False  # the worker refused the token: get a new one before connecting
        self._close_code: int | None = None  # the last socket's close code
        self._auth_error: AuthenticationFailed | None = None  # set once a refused token ended the client
        self._ended = asyncio.Event()  # the connection loop gave up for good (a refused token)

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
        self._fail_requests(self._core.connection_lost(), ClientClosed("client closed"))
        for waiter in self._join_waiters.values():
            if not waiter.done():
                waiter.set_exception(ClientClosed("client closed"))
        self._join_waiters.clear()
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
        return sorted(self._core.rooms)

    @property
    def last_moved(self) -> dict[str, dict[str, Any]]:
        """room -> the last `moved` frame received for it."""
        return self._core.last_moved

    @property
    def unrecovered(self) -> dict[str, dict[str, Any]]:
        """room -> the last `joined` with recovered: false."""
        return self._core.unrecovered

    @property
    def duplicates_dropped(self) -> int:
        """Messages at or before a room's position, not yielded."""
        return self._core.duplicates_dropped

    def position(self, room: str) -> Position | None:
        """The last (seq, epoch) seen in `room`: from its `joined` or its latest message."""
        return self._core.position(room)

    async def join(self, room: str) -> dict[str, Any]:
        """Join `room` (it is re-joined after every reconnect) and return the `joined` frame."""
        self._check_open()
        waiter = asyncio.get_running_loop().create_future()
        self._core.join(room)  # raises ValueError when already joined
        self._join_waiters[room] = waiter
        self._rooms_changed.set()
        await self._flush_quietly()  # connected: the join is queued; otherwise the next welcome queues it
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await asyncio.shield(waiter)
        except TimeoutError:
            self._core.forget_room(room)
            raise
        finally:
            if self._join_waiters.get(room) is waiter:
                del self._join_waiters[room]

    async def leave(self, room: str) -> None:
        """Leave `room`; it is no longer re-joined."""
        self._check_open()
        request = self._core.leave(room)  # raises ValueError when not joined
        if request is not None:
            await self._await_reply(request)

    async def publish(
        self, room: str, text: str | None = None, *, data: Any = MISSING, idempotency_key: str | None = None,
        retry: bool = False, attempts: int = PUBLISH_ATTEMPTS,
    ) -> dict[str, Any]:
        """Publish `text` (or any JSON-able `data`) to a joined room; returns the server's `ack`.

        idempotency_key: sent as the frame's `idempotencyKey` (1..64 printable ASCII). With one, a
            publish that failed with PUBLISH_UNCONFIRMED, BUS_UNAVAILABLE or ConnectionLost is sent
            again (after a reconnect if need be), up to `attempts` tries within request_timeout_s in
            all: the server publishes a key at most once per room within its idempotency window, and
            the `ack` of a retry whose earlier try was published carries that try's seq/epoch and
            `duplicate: true`. Without a key, nothing is retried (at most once).
        retry: generate a key for this call when none is given (so its own retries are safe).
        """
        self._check_open()
        if (text is None) == (data is MISSING):
            raise ValueError("give exactly one of text or data")
        if idempotency_key is None and retry:
            idempotency_key = secrets.token_hex(16)
        tries = max(1, attempts) if idempotency_key is not None else 1
        async with asyncio.timeout(self.request_timeout_s):
            for attempt in range(tries):
                try:
                    await self._until_connected()
                    request = self._core.publish(room, text, data=data, idempotency_key=idempotency_key)
                    return await self._await_reply(request)
                except (ServerError, ConnectionLost) as exc:
                    retryable = not isinstance(exc, ServerError) or exc.code in RETRYABLE_PUBLISH_CODES
                    if not retryable or attempt + 1 >= tries:
                        raise
                    log.info("publish to %s failed (%s); retrying with its idempotency key", room, exc)
                await asyncio.sleep(self.backoff.delay_s(attempt, self._rand))
        raise AssertionError("unreachable")

    async def history(self, room: str, since: Position | None = None, limit: int | None = None) -> dict[str, Any]:
        """The `history` reply for `room`: `{room, seq, epoch, messages, complete}` (no join needed).

        since: messages after this position (None: the latest `limit`); limit: at most this many (the
        server caps it at its max_history_page). `complete: false`: ask again from the last message's seq.
        ServerError FORBIDDEN outside the token's `rooms`.
        """
        return await self._ask(lambda: self._core.history(room, since, limit))

    async def presence(self, room: str) -> dict[str, Any]:
        """Who is in `room`: the `presence` reply `{room, members: [{user, conn, info, worker}], count, complete}`.

        ServerError PRESENCE_DISABLED when no --presence-rule covers the room, FORBIDDEN outside the token's `rooms`.
        """
        return await self._ask(lambda: self._core.presence(room))

    async def presence_stats(self, room: str) -> dict[str, Any]:
        """How many are in `room`: the `presence_stats` reply `{room, connections, users, complete}`."""
        return await self._ask(lambda: self._core.presence(room, stats=True))

    async def _ask(self, make_request: Callable[[], Request]) -> dict[str, Any]:
        """Send one request once connected and return its reply, all within request_timeout_s."""
        self._check_open()
        async with asyncio.timeout(self.request_timeout_s):
            await self._until_connected()
            return await self._await_reply(make_request())

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        """The next delivered frame; StopAsyncIteration once closed, AuthenticationFailed once a token was refused."""
        if self._messages.empty():
            if self._auth_error is not None:
                raise self._auth_error
            if self._closed:
                raise StopAsyncIteration
        message = await self._messages.get()
        if message is None:
            if self._auth_error is not None:
                raise self._auth_error
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
        """Wait for CONNECTED: TimeoutError after `timeout_s`; AuthenticationFailed once a refused token ended the client."""
        async with asyncio.timeout(timeout_s if timeout_s is not None else self.request_timeout_s):
            await self._until_connected()

    async def _until_connected(self) -> None:
        if self._auth_error is not None:
            raise self._auth_error
        if self._connected.is_set():
            return
        waits = [asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if self._auth_error is not None:
            raise self._auth_error

    # --- the connection loop ----------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        next_url: str | None = None
        while not self._closed:
            if not self._core.rooms:
                self._set_state(ConnectionState.IDLE, "no_rooms")
                self._rooms_changed.clear()
                await self._rooms_changed.wait()
                continue
            self._set_state(ConnectionState.CONNECTING, "connecting", next_url, attempt)
            hint: Reconnect | None = None
            reason = "connection_lost"
            url: str | None = None
            refused: str | None = None  # the token was refused: REASON_UNAUTHORIZED or REASON_TOKEN_EXPIRED
            self._close_code = None
            try:
                url = next_url or await self._lookup()
                next_url = None
                await self._ensure_token()
                hint = await self._connection(url)
                attempt = 0  # the connection worked; a later failure starts the schedule over
                if self._close_code == TOKEN_EXPIRED_CLOSE_CODE:
                    refused = REASON_TOKEN_EXPIRED
            except _LookupFailed as exc:
                reason = "lookup_failed"
                log.info("route lookup failed: %s", exc)
            except _TokenUnavailable as exc:
                reason = REASON_TOKEN_UNAVAILABLE
                log.warning("get_token failed: %s", exc)
            except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError, ValueError, ClientError) as exc:
                reason = "connect_failed" if self.url is None else "connection_lost"
                log.info("connection failed: %r", exc)
                if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status == UNAUTHORIZED_STATUS:
                    refused = REASON_UNAUTHORIZED
                elif self._close_code == TOKEN_EXPIRED_CLOSE_CODE:
                    refused = REASON_TOKEN_EXPIRED
                if url is not None and self.url is None and _no_answer(exc):
                    self._core.host_unreachable(url)  # no `moved` back to it until a newer ring
            finally:
                self._connected.clear()
                self._ws = None
                self.url = None
                self._fail_requests(self._core.connection_lost(), ConnectionLost("connection lost"))
            if self._closed:
                return
            if refused is not None:
                if self._get_token is None:
                    self._end_for_auth(refused)
                    return
                self._token_stale = True  # the next attempt calls get_token() first
                reason, hint = refused, None
            if hint is not None:
                reason, next_url = hint.reason, hint.url
            if hint is not None and hint.delay_s is not None:
                delay_s = hint.delay_s  # the server's own (already jittered) delay, or a move: not a failure
            else:
                delay_s = self.backoff.delay_s(attempt, self._rand)
                attempt += 1
            self._set_state(ConnectionState.WAITING, reason, next_url, attempt, delay_s)
            if delay_s > 0:
                await asyncio.sleep(delay_s)

    async def _ensure_token(self) -> None:
        """Before a connect: call get_token() when there is no token yet, the worker refused the last one,
        or its `exp` has passed by this machine's clock."""
        if self._get_token is None:
            return
        exp = token_expiry(self._token) if self._token else None
        if self._token and not self._token_stale and (exp is None or exp > time.time()):
            return
        try:
            async with asyncio.timeout(self.request_timeout_s):
                token = await self._get_token()
        except Exception as exc:  # the application's callable: whatever it raises (or a timeout) is a failed attempt
            raise _TokenUnavailable(repr(exc)) from None
        if not isinstance(token, str) or not token:
            raise _TokenUnavailable(f"get_token returned {type(token).__name__}, not a token")
        self._token, self._token_stale = token, False

    def _end_for_auth(self, reason: str) -> None:
        """A refused token and no get_token: end the client; the application gets AuthenticationFailed."""
        why = ("the worker refused the token (HTTP 401)" if reason == REASON_UNAUTHORIZED
               else "the token expired and the worker closed the connection (4001)")
        error = AuthenticationFailed(reason.removeprefix("auth_failed:"), why + "; pass get_token to renew it")
        self._auth_error = error
        self._ended.set()
        log.error("ringcast client stopped: %s", error)
        for waiter in self._join_waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._join_waiters.clear()
        self._set_state(ConnectionState.CLOSED, reason)
        try:
            self._messages.put_nowait(None)  # `async for` raises it after what was delivered before
        except asyncio.QueueFull:
            pass  # __anext__ sees _auth_error once it drains the queue

    async def _keep_token_fresh(self) -> None:
        """While connected: refresh the token before its `exp`, in place; give up after REFRESH_ATTEMPTS
        failures in a row (the worker then closes 4001 at `exp`, and the loop reconnects with get_token())."""
        assert self._get_token is not None
        while True:
            exp = token_expiry(self._token) if self._token else None
            if exp is None:
                return  # nothing says when it ends: never refreshed in place
            remaining_s = exp - time.time()
            lead_s = min(self.refresh_before_s, remaining_s * SHORT_TOKEN_REFRESH_SHARE)
            await asyncio.sleep(max(0.0, remaining_s - lead_s))
            retry_delay_s = max(0.05, lead_s / (REFRESH_ATTEMPTS + 1))
            for attempt in range(1, REFRESH_ATTEMPTS + 1):
                try:
                    async with asyncio.timeout(self.request_timeout_s):
                        token = await self._get_token()
                    if not isinstance(token, str) or not token:
                        raise _TokenUnavailable(f"get_token returned {type(token).__name__}, not a token")
                    await self._await_reply(self._core.refresh(token))
                except Exception as exc:  # ServerError (TOKEN_*), ConnectionLost, TimeoutError, get_token's own
                    log.warning("token refresh attempt %d/%d failed: %r", attempt, REFRESH_ATTEMPTS, exc)
                    self._set_state(ConnectionState.CONNECTED, REASON_TOKEN_REFRESH_FAILED, self.url, attempt,
                                    force=True)
                    if attempt < REFRESH_ATTEMPTS:
                        await asyncio.sleep(retry_delay_s)
                    continue
                self._token = token
                self.token_refreshes += 1
                self._set_state(ConnectionState.CONNECTED, REASON_TOKEN_REFRESHED, self.url, force=True)
                break
            else:
                log.warning("token not refreshed after %d attempts: the worker closes the connection at its exp",
                            REFRESH_ATTEMPTS)
                return

    async def _lookup(self) -> str:
        """Ask the router where the home room lives."""
        assert self._session is not None
        home = self._core.home_room or ""
        url = f"{self.router_url}/route?room={quote(home, safe='')}"
        try:
            async with self._session.get(url) as response:
                body = await response.json(loads=orjson.loads, content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise _LookupFailed(f"{url}: {exc!r}") from None
        if response.status != 200 or not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise _LookupFailed(f"{url}: HTTP {response.status} {body!r}")
        self._core.route_answer(body.get("epoch"))
        return body["url"]

    async def _connection(self, url: str) -> Reconnect | None:
        """One WebSocket's life: connect, welcome, re-join, read until it ends; returns the hint it left."""
        assert self._session is not None
        self.url = None
        ws = await self._session.ws_connect(
            url,
            headers={"Authorization": f"Bearer {self._token}"} if self._token else None,
            protocols=(_SUBPROTOCOL[self.codec],),
            heartbeat=self.ping_interval_s,
            autoping=True,
            max_msg_size=0,  # the server bounds its frames; the client trusts the worker it asked for
            timeout=aiohttp.ClientWSTimeout(ws_close=self.connect_timeout_s),
        )
        refresher: asyncio.Task | None = None
        try:
            welcome = self._decode(await ws.receive(timeout=self.connect_timeout_s))
            if welcome.get("type") != "welcome":
                raise ConnectionError(f"expected welcome, got {welcome.get('type')!r}")
            self._core.connection_opened(url)
            self._core.receive(welcome)  # queues the re-join of every room, `since` included
            self._ws = ws
            self.url = url
            self.worker_id = self._core.worker_id
            connection_id = welcome.get("connectionId")
            self.connection_id = connection_id if isinstance(connection_id, str) else None
            await self._flush()  # the re-joins go out before any publish
            self._connected.set()
            self._set_state(ConnectionState.CONNECTED, "connected", url)
            if self._get_token is not None and self.refresh_before_s > 0:
                refresher = asyncio.create_task(self._keep_token_fresh(), name="ringcast-token-refresh")
            return await self._read(ws)
        finally:
            if refresher is not None:
                refresher.cancel()
                await asyncio.gather(refresher, return_exceptions=True)
            self._close_code = ws.close_code
            if isinstance(ws.exception(), aiohttp.ServerTimeoutError):
                self._core.host_unreachable(url)  # no pong within the heartbeat: the link or the host is gone
            if not ws.closed:
                await ws.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> Reconnect | None:
        hint: Reconnect | None = None
        while True:
            msg = await ws.receive()
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return hint
            for event in self._core.receive(self._decode(msg)):
                if isinstance(event, Message):
                    await self._messages.put(event.frame)  # blocks when full: backpressure, not memory growth
                elif isinstance(event, Joined):
                    self._on_joined(event)
                    if event.unrecovered:
                        await self._messages.put(event.frame)  # the gap's place in the stream
                elif isinstance(event, Reply):
                    self._resolve(event.request, event.frame)
                elif isinstance(event, RequestFailed):
                    self._on_failed(event)
                elif isinstance(event, Reconnect):
                    if event.close_now:
                        return event
                    hint = event  # the worker closes the socket next; keep reading what it still sends
                elif isinstance(event, PresenceDiff):
                    await self._messages.put(event.frame)  # yielded like a message (rooms with presence events only)
                elif isinstance(event, Gap):
                    log.warning("gap in %s after %s (got seq %s): re-joining with since", event.room, event.last,
                                event.frame.get("seq"))
                # Duplicate, OutOfOrder: dropped (counted by the core); Notice: nothing to do
            await self._flush()  # a gap repair's leave + join

    def _on_joined(self, event: Joined) -> None:
        waiter = self._join_waiters.pop(event.room, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(event.frame)

    def _on_failed(self, event: RequestFailed) -> None:
        request = event.request
        if request is None or (request.kind == "join" and not event.room_dropped):
            log.info("re-join refused (%s): reconnecting", event.code)
            return
        if event.room_dropped:
            waiter = self._join_waiters.pop(request.room or "", None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(event.error())
            else:
                log.warning("could not re-join %s: %s", request.room, event.error())
            return
        if request.waiter is not None and not request.waiter.done():
            request.waiter.set_exception(event.error())

    # --- frames ------------------------------------------------------------------------------

    async def _await_reply(self, request: Request) -> dict[str, Any]:
        request.waiter = asyncio.get_running_loop().create_future()
        try:
            await self._flush()
            async with asyncio.timeout(self.request_timeout_s):
                return await request.waiter
        finally:
            self._core.cancel(request)

    @staticmethod
    def _resolve(request: Request, frame: dict[str, Any]) -> None:
        if request.waiter is not None and not request.waiter.done():
            request.waiter.set_result(frame)

    async def _flush(self) -> None:
        """Send what the core queued, in its order; ConnectionLost when there is no socket."""
        async with self._send_lock:
            frames = self._core.frames_to_send()
            if not frames:
                return
            ws = self._ws
            if ws is None or ws.closed:
                raise ConnectionLost("not connected")
            try:
                for frame in frames:
                    if self.codec == MSGPACK:
                        await ws.send_bytes(msgpack.packb(frame, use_bin_type=True))
                    else:
                        await ws.send_str(orjson.dumps(frame).decode())
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise ConnectionLost(str(exc)) from None

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except ConnectionLost:
            pass  # the connection loop re-joins every room on the next connection

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

    # --- plumbing -----------------------------------------------------------------------------

    @staticmethod
    def _fail_requests(requests: list[Request], error: Exception) -> None:
        for request in requests:
            if request.waiter is not None and not request.waiter.done():
                request.waiter.set_exception(error)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("client closed")
        if self._auth_error is not None:
            raise self._auth_error
        if self._runner is None:
            raise ClientError("use the client as `async with Client(...) as client:`")

    def _set_state(
        self, state: ConnectionState, reason: str, url: str | None = None, attempt: int = 0, delay_s: float = 0.0,
        force: bool = False,
    ) -> None:
        """Report a change; one equal to the latest is dropped unless `force` (an event, e.g. each refresh)."""
        change = StateChange(state, reason, url, attempt, delay_s)
        if change == self._state and not force:
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
