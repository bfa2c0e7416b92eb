"""Verifying, resuming drill clients: room members that check every message, publishers that count acks.

Owns what the delivery promise looks like from a client under faults, at
drill sizes (thousands of sockets in one asyncio process). The protocol is
the SDK's own: every client drives a `router.client_core.ClientCore` (frames,
request ids, positions, duplicates, resume with `since`, gap repair, hints),
and waits with `router.backoff`; this module adds only the cheap I/O (one
shared aiohttp session, one task per socket, fixed worker URLs tried in
turn instead of a route lookup) and the verification:

- `RoomMember` holds one WebSocket in one room and records what it accepted
  (`_Stream`). The core hands it only the next message of the stream; what
  the core dropped is counted honestly (duplicates, out of order), and a
  gap on a live connection is counted before the core repairs it (leave +
  join with `since`). On any disconnect it reconnects with backoff
  (honouring a `reconnect` frame's `delayMs` and `url`) and the core
  re-joins with `since`.
- `Publisher` publishes at a steady pace with an `id` on every message and
  counts a message as sent only when its `ack` arrives; BUS_UNAVAILABLE,
  rate limits and disconnects are retried, never counted as sent.
- `Ledger` is the shared record both write into: acked positions, what each
  member accepted, delivery and latency samples, client-visible errors.

It must not start or stop servers (the scenarios do) nor judge pass or fail
(chaos/drill/measure.py does).
"""

from __future__ import annotations

import asyncio
import collections
import time
from array import array
from urllib.parse import urlparse

import aiohttp
import orjson

from router.backoff import BackoffPolicy
from router.client_core import (
    ClientCore,
    Duplicate,
    Event,
    Gap,
    Joined,
    Message,
    Notice,
    OutOfOrder,
    Reconnect,
    Reply,
    Request,
    RequestFailed,
)

RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
JOIN_TIMEOUT_S = 10.0  # a welcome, a join (or an ack) slower than this counts as a lost connection

# The drills' reconnect schedule: full jitter from the first retry spreads a mass disconnect over
# 0.5 s, then 1 s, capped at 2 s (a drill measures recovery; the SDK's 1-30 s would dominate it).
DRILL_BACKOFF = BackoffPolicy(base_s=0.5, factor=2.0, cap_s=2.0, jitter=1.0)

# Client-side liveness (aiohttp's WebSocket heartbeat), for drills that cut links: after this many seconds
# without any frame from the server the client pings, and declares the connection dead (counted as
# `liveness_timeout`, close code 1006) when no frame arrives within half of it more: at most 1.5 x this of
# silence. A cut link carries no FIN and no RST; without it a member of a cut-off worker would wait for TCP's
# retransmission timeout (about 15 minutes on Linux) before resuming. The SDK does the same
# (router/client.py, `heartbeat`). Local drills run without it (a killed process's kernel resets its sockets),
# so their numbers do not move; fleet drills (chaos/drill/fleet.py) turn it on.
LIVENESS_PING_AFTER_S = 2.0


class Ledger:
    """Everything the drill's clients saw, on one clock (seconds since the ledger was made)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.acked: dict[str, dict[tuple[str, int], float]] = collections.defaultdict(dict)  # room -> position -> send ms
        self.acked_per_s: collections.Counter[int] = collections.Counter()
        self.delivered_per_s: collections.Counter[int] = collections.Counter()
        self.latency_at_s = array("d")  # receive time of each latency sample
        self.latency_ms = array("d")  # publish (client clock) -> receive, milliseconds
        self.errors: collections.Counter[str] = collections.Counter()  # client-visible errors, by kind
        self.error_times: list[tuple[float, str]] = []
        self.error_samples: dict[str, list[dict]] = collections.defaultdict(list)  # first frames of each kind, as evidence
        self.resumes: collections.Counter[str] = collections.Counter()  # joined.recovered / reason of resuming joins
        self.disconnects: list[float] = []  # when a member lost its connection
        self.reconnects: list[float] = []  # when a member that had lost it was joined again
        self.connected = 0  # members joined right now
        self.duplicates = 0
        self.out_of_order = 0  # a message of an epoch the member had already left
        self.gaps_while_connected = 0  # jumps seen on a live connection (repaired by re-joining with since)
        self.declared_losses = 0  # joins answered recovered:false that skipped positions
        self.gap_samples: list[dict] = []  # the first few gaps, as evidence for a server bug report
        self.publish_attempts = 0
        self.fault_end_ms: float | None = None  # wall-clock ms; messages sent after it prove recovery

    def now(self) -> float:
        return time.monotonic() - self.t0

    def error(self, kind: str, evidence: dict | None = None) -> None:
        self.errors[kind] += 1
        self.error_times.append((self.now(), kind))
        if evidence is not None:  # keep the first few of each distinct (kind, message, before/after the fault)
            samples = self.error_samples[kind]
            after = self.fault_end_ms is not None
            same = [s for s in samples if s.get("message") == evidence.get("message") and s["after_fault"] == after]
            if len(same) < 2 and len(samples) < 8:
                samples.append({"t": round(self.now(), 3), "after_fault": after, **evidence})

    def ack(self, room: str, epoch: str, seq: int, sent_ms: float) -> None:
        self.acked[room][(epoch, seq)] = sent_ms
        self.acked_per_s[int(self.now())] += 1

    def delivered(self, sent_ms: float | None) -> None:
        now = self.now()
        self.delivered_per_s[int(now)] += 1
        if sent_ms is not None:
            self.latency_at_s.append(now)
            self.latency_ms.append(time.time() * 1000 - sent_ms)


class _Stream:
    """What one member accepted of one room: per epoch, the intervals of seqs (contiguous unless declared lost)."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.last_seq = 0
        self.intervals: dict[str, list[list[int]]] = {}

    def start(self, epoch: str, seq: int) -> None:
        """The position the stream continues after (a join, or a declared jump)."""
        self.epoch, self.last_seq = epoch, seq
        self.intervals.setdefault(epoch, []).append([seq + 1, seq])

    def accept(self, seq: int) -> None:
        self.last_seq = seq
        self.intervals[self.epoch][-1][1] = seq  # type: ignore[index]

    def has(self, epoch: str, seq: int) -> bool:
        return any(first <= seq <= last for first, last in self.intervals.get(epoch, ()))


class _Connection:
    """The shared reconnect loop of members and publishers: connect, run a session over the core, wait, repeat."""

    def __init__(self, ledger: Ledger, session: aiohttp.ClientSession | None, urls: list[str], home: int,
                 backoff: BackoffPolicy, liveness_s: float | None = None):
        self.ledger = ledger
        self.liveness_s = liveness_s  # LIVENESS_PING_AFTER_S or None (no client-side liveness check)
        self.session = session
        self.urls = urls
        self.url = urls[home % len(urls)]  # where it connects next: its home, a notice's url, or the next one
        self.backoff = backoff
        self.core = ClientCore()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.stopping = False
        self.redirect_url: str | None = None  # from a `reconnect` frame
        self.notice_delay_s: float | None = None  # from a `reconnect` frame
        self.dropped_by_us = False  # abort() cut the socket: its close code is not the server's doing
        self.left_by_choice = False  # the session ended on our decision (a notice, a failed join): not a cut
        self.last_notice_url: str | None = None
        self.served = False  # the current session got as far as being joined
        self.connect_failures: list[tuple[float, str, str]] = []  # (ledger time, kind, url), the first 100

    async def run(self) -> None:
        assert self.session is not None
        attempt = 0
        while not self.stopping:
            if self.redirect_url:
                self.url, self.redirect_url = self.redirect_url, None  # the server said where to go: stay there
            url = self.url
            unreachable = False  # no answer at all (timeout, no route): the host, not the worker, may be gone
            try:
                ws = await self.session.ws_connect(url, autoping=True, max_msg_size=0, heartbeat=self.liveness_s)
            except aiohttp.WSServerHandshakeError as exc:  # 429 per-IP cap, 503 not accepting
                self.ledger.error(f"http_{exc.status}", {"url": url, "message": exc.message,
                                                         "after_notice": url == self.last_notice_url})
                self._connect_failed(f"http_{exc.status}", url)
                ws = None
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                self.ledger.error("connect_failed")
                ws = None
                unreachable = not isinstance(getattr(exc, "os_error", exc), ConnectionRefusedError)
                self._connect_failed("no_answer" if unreachable else "refused", url)
                if unreachable:
                    self.core.host_unreachable(url)  # no `moved` back to that host until a newer ring
            if ws is None:
                self._next_url(other_host=unreachable)  # try the next worker (on another host if no answer)
                await asyncio.sleep(self.backoff.delay_s(attempt + 1))
                attempt += 1
                continue
            self.ws = ws
            self.served = False
            try:
                await self.session_on(ws)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                self.ws = None
                if self.core.connected:  # serve() already ended it (twice would reset the core's `moved` bound)
                    for request in self.core.connection_lost():
                        self.request_lost(request)
                reason = self._end_reason(ws)
                self.on_disconnected(reason)
                if not ws.closed:
                    await ws.close()
            if self.stopping:
                return
            if reason == "liveness_timeout":
                self.core.host_unreachable(url)
                self.ledger.error(reason)  # the link went silent: we gave up on it (close code 1006) ...
                self._next_url(other_host=True)  # ... and on its host for now: the host's link may be what broke
            elif ws.close_code not in (None, 1000, 1001) and not (self.dropped_by_us or self.left_by_choice):
                self.ledger.error(f"close_{ws.close_code}")  # the server cut us (or the socket died)
            self.dropped_by_us = self.left_by_choice = False
            if self.notice_delay_s is not None:  # the server said how long to wait
                delay, self.notice_delay_s = self.notice_delay_s, None
                attempt = 0
            else:
                attempt = 0 if self.served else attempt + 1
                delay = self.backoff.delay_s(attempt)
            await asyncio.sleep(delay)

    def _connect_failed(self, kind: str, url: str) -> None:
        if len(self.connect_failures) < 100:
            self.connect_failures.append((round(self.ledger.now(), 3), kind, url))

    def _end_reason(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """How a session ended, as this client saw it."""
        if self.dropped_by_us:
            return "dropped_by_client"
        if self.left_by_choice:
            return "left"  # a reconnect notice, or a refused join
        if isinstance(ws.exception(), aiohttp.ServerTimeoutError):
            return "liveness_timeout"  # no pong (nor any frame) within the liveness window
        if ws.close_code is not None:
            return f"close_{ws.close_code}"
        return "no_close_frame"  # a timeout waiting for a reply or the welcome, or an unclean end

    def _next_url(self, other_host: bool = False) -> None:
        """Move to the next worker URL in the list (`other_host`: the next one on another host, if any)."""
        index = self.urls.index(self.url) if self.url in self.urls else -1
        host = urlparse(self.url).hostname
        for step in range(1, len(self.urls) + 1):
            candidate = self.urls[(index + step) % len(self.urls)]
            if not other_host or urlparse(candidate).hostname != host:
                self.url = candidate
                return
        self.url = self.urls[(index + 1) % len(self.urls)]  # every worker is on that host

    def abort(self) -> None:
        """Drop the socket without a close frame (a network blip, as the server sees it)."""
        ws = self.ws
        if ws is not None:
            self.dropped_by_us = True
            transport = ws._response.connection.transport if ws._response.connection else None  # noqa: SLF001
            if transport is not None:
                transport.abort()

    async def stop(self) -> None:
        self.stopping = True
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()

    async def session_on(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await self.serve(ws)

    async def serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read one connection: the welcome (the core queues the joins, with `since`), then every frame."""
        welcome = await ws.receive(timeout=JOIN_TIMEOUT_S)
        if welcome.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed before welcome ({welcome.type.name})")
        self.core.connection_opened(self.url)
        self.core.receive(orjson.loads(welcome.data))
        try:
            await self.send_queued(ws)
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                leave = False
                for event in self.core.receive(orjson.loads(msg.data)):
                    leave = self.on_event(event) or leave
                if leave:
                    break
                await self.send_queued(ws)
        finally:
            for request in self.core.connection_lost():  # fail what is in flight now, not after the session
                self.request_lost(request)

    async def send_queued(self, ws) -> None:
        for frame in self.core.frames_to_send():
            await ws.send_str(orjson.dumps(frame).decode())

    def on_event(self, event: Event) -> bool:
        """Handle one event of the core; True: leave this connection now."""
        if isinstance(event, Reconnect):
            if event.close_now:
                self.left_by_choice = True  # a refused re-join (or a move): back with backoff, resuming
                if event.url:  # `moved`: the owner of our home room (the core bounds how often it says so)
                    self.redirect_url = event.url
                return True
            self.follow_notice(event)
            return True  # the server closes next; stop reading
        if isinstance(event, Notice) and event.frame.get("type") == "error":
            self.ledger.error(str(event.frame.get("code", "?")), {"url": self.url, "during": "unmatched",
                                                                  **event.frame})
        return False

    def request_lost(self, request: Request) -> None:
        """A request in flight when the connection ended."""

    def on_disconnected(self, reason: str) -> None:
        pass

    def follow_notice(self, event: Reconnect) -> None:
        self.ledger.errors["reconnect_notice"] += 1  # not an error, but client-visible: counted with them
        self.left_by_choice = True
        self.notice_delay_s = event.delay_s
        self.redirect_url = self.last_notice_url = event.url
        if not self.redirect_url:
            self.ledger.errors["reconnect_notice_without_url"] += 1


class RoomMember(_Connection):
    """One resuming member of one room that verifies the order and completeness of what it receives."""

    def __init__(self, ledger: Ledger, session: aiohttp.ClientSession | None, urls: list[str], home: int, room: str,
                 backoff: BackoffPolicy, liveness_s: float | None = None) -> None:
        super().__init__(ledger, session, urls, home, backoff, liveness_s)
        self.room = room
        self.core.join(room)
        self.stream = _Stream()
        self.joined_once = asyncio.Event()
        self.connected = False
        self.accept_jump = False  # the server declared a gap (recovered:false); the next message restarts the stream
        self.first_after_fault_s: float | None = None
        self.ever_disconnected = False
        self.join_failures = 0  # consecutive refused first joins (reset by a `joined`)
        self.disconnect_log: list[tuple[float, str, str]] = []  # (ledger time, reason, url) of each lost connection
        self.join_log: list[tuple[float, str]] = []  # (ledger time, url) of each (re)join after a lost connection

    async def session_on(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self.room not in self.core.rooms:  # its first join was refused, and the connection ended before a retry
            self.core.join(self.room)
        await self.serve(ws)

    @property
    def live(self) -> bool:
        """Joined on this connection with no join in flight: messages now are ours to judge."""
        return self.core.is_live(self.room)

    def on_disconnected(self, reason: str) -> None:
        if self.connected:
            self.connected = False
            self.ledger.connected -= 1
            if not self.stopping:
                self.ledger.disconnects.append(self.ledger.now())
                self.ever_disconnected = True
                if len(self.disconnect_log) < 100:
                    self.disconnect_log.append((self.ledger.now(), reason, self.url))

    def on_event(self, event: Event) -> bool:
        if isinstance(event, Message):
            self._accept(event.frame)
        elif isinstance(event, Duplicate):
            self.ledger.duplicates += 1
        elif isinstance(event, OutOfOrder):
            self.ledger.out_of_order += 1
        elif isinstance(event, Gap):
            self.ledger.gaps_while_connected += 1
            if len(self.ledger.gap_samples) < 10:
                self.ledger.gap_samples.append({"t": round(self.ledger.now(), 3), "room": self.room, "url": self.url,
                                                "last": [event.last.epoch, event.last.seq],
                                                "got": [event.frame.get("epoch"), event.frame.get("seq")]})
        elif isinstance(event, Joined):
            self._joined(event.frame)
        elif isinstance(event, RequestFailed):
            during = "join" if event.request is None or event.request.kind == "join" else "member"
            self.ledger.error(event.code, {"url": self.url, "during": during, **event.frame})
            if event.room_dropped:  # the first join was refused (BUS_UNAVAILABLE): try again on this connection
                self.join_failures += 1
                delay = self.backoff.delay_s(min(self.join_failures, 6))
                asyncio.get_running_loop().call_later(delay, self._retry_join, self.ws)
        else:
            return super().on_event(event)
        return False

    def _retry_join(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        if ws is not None and not ws.closed and ws is self.ws and self.room not in self.core.rooms:
            self.core.join(self.room)
            asyncio.ensure_future(self._send_quietly(ws))

    async def _send_quietly(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            await self.send_queued(ws)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass  # the read loop sees the closed socket and reconnects

    def _on_joined(self, frame: dict) -> None:
        """Feed a `joined` frame (the core matches it; tests call this directly)."""
        for event in self.core.receive(frame):
            self.on_event(event)

    async def _on_message(self, ws, frame: dict) -> None:
        """Feed a `message` frame and send what the core queued in answer (a gap's repair)."""
        for event in self.core.receive(frame):
            self.on_event(event)
        await self.send_queued(ws)

    def _joined(self, frame: dict) -> None:
        self.served = True
        self.join_failures = 0
        if "recovered" in frame:
            self.ledger.resumes["recovered" if frame["recovered"] else frame.get("reason", "?")] += 1
            if not frame["recovered"]:
                self.accept_jump = True
        if self.stream.epoch is None:
            self.stream.start(frame["epoch"], frame["seq"])
        if not self.connected:
            self.connected = True
            self.ledger.connected += 1
            if self.ever_disconnected:
                self.ledger.reconnects.append(self.ledger.now())
                if len(self.join_log) < 100:
                    self.join_log.append((self.ledger.now(), self.url))
        self.joined_once.set()

    def _accept(self, frame: dict) -> None:
        """Record a message the core passed on: the next of the stream, or the first after a declared loss."""
        stream = self.stream
        seq, epoch = frame["seq"], frame["epoch"]
        if self.accept_jump:
            self.accept_jump = False
            if epoch != stream.epoch or seq != stream.last_seq + 1:
                self.ledger.declared_losses += 1
                stream.start(epoch, seq - 1)
        elif epoch != stream.epoch or seq != stream.last_seq + 1:
            stream.start(epoch, seq - 1)  # a new stream from seq 1 (the core passes nothing else): record it
        stream.accept(seq)
        data = frame.get("data")
        sent_ms = data.get("ts") if isinstance(data, dict) else None
        self.ledger.delivered(sent_ms)
        if self.first_after_fault_s is None and self.ledger.fault_end_ms is not None and sent_ms is not None \
                and sent_ms >= self.ledger.fault_end_ms:
            self.first_after_fault_s = self.ledger.now()


class Publisher(_Connection):
    """Publishes to its rooms in turn at a steady pace; a message counts as sent only once acked."""

    MAX_JOIN_ATTEMPTS = 19  # a refused join (BUS_UNAVAILABLE) is retried on the same connection this often

    def __init__(self, ledger: Ledger, session: aiohttp.ClientSession | None, urls: list[str], home: int, name: str,
                 rooms: list[str], rate_per_s: float, payload_bytes: int, backoff: BackoffPolicy,
                 liveness_s: float | None = None) -> None:
        super().__init__(ledger, session, urls, home, backoff, liveness_s)
        self.name = name
        self.rooms = rooms
        for room in rooms:
            self.core.join(room)
        self.interval_s = 1.0 / rate_per_s
        self.padding = "x" * payload_bytes
        self.publishing = asyncio.Event()
        self.parked = False  # waiting for `publishing`, nothing in flight: every ack it will ever get is in
        self.ready = asyncio.Event()  # joined to all its rooms at least once
        self.connected = False
        self._joined: set[str] = set()  # rooms joined on this connection
        self._all_joined = asyncio.Event()
        self._join_attempts: collections.Counter[str] = collections.Counter()
        self._count = 0

    def on_disconnected(self, reason: str) -> None:
        self.connected = False

    def request_lost(self, request: Request) -> None:
        if request.waiter is not None and not request.waiter.done():
            request.waiter.set_exception(ConnectionError("connection lost"))

    def on_event(self, event: Event) -> bool:
        if isinstance(event, Joined):
            self._joined.add(event.room)
            if self._joined.issuperset(self.rooms):
                self._all_joined.set()
        elif isinstance(event, Reply):
            if event.request.waiter is not None and not event.request.waiter.done():
                event.request.waiter.set_result(event.frame)
        elif isinstance(event, RequestFailed):
            request = event.request
            if request is not None and request.kind == "publish":
                if request.waiter is not None and not request.waiter.done():
                    request.waiter.set_result(event.frame)  # the publish loop judges the error
                return False
            self.ledger.error(event.code, {"url": self.url, "during": "join", **event.frame})
            if event.room_dropped and request is not None and request.room is not None:
                room = request.room
                self._join_attempts[room] += 1
                if self._join_attempts[room] >= self.MAX_JOIN_ATTEMPTS:
                    self.left_by_choice = True
                    return True
                delay = self.backoff.delay_s(min(self._join_attempts[room], 6))
                asyncio.get_running_loop().call_later(delay, self._retry_join, self.ws, room)
        else:
            return super().on_event(event)
        return False

    def _retry_join(self, ws: aiohttp.ClientWebSocketResponse | None, room: str) -> None:
        if ws is not None and not ws.closed and ws is self.ws and room not in self.core.rooms:
            self.core.join(room)
            asyncio.ensure_future(self._send_quietly(ws))

    async def _send_quietly(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            await self.send_queued(ws)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass

    async def session_on(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._joined.clear()
        self._all_joined.clear()
        self._join_attempts.clear()
        for room in self.rooms:  # a room given up on in an earlier session is joined again
            if room not in self.core.rooms:
                self.core.join(room)
        reader = asyncio.create_task(self.serve(ws))
        try:
            joined = asyncio.create_task(self._all_joined.wait())
            await asyncio.wait({reader, joined}, timeout=JOIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            joined.cancel()
            if not self._all_joined.is_set():
                if not reader.done():
                    self.ledger.error("reply_timeout")
                return
            self.served = self.connected = True
            self.ready.set()
            await self._publish_loop(ws, reader)
        except TimeoutError:
            self.ledger.error("reply_timeout")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _request(self, ws: aiohttp.ClientWebSocketResponse, request: Request) -> dict:
        request.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.send_queued(ws)
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                return await request.waiter
        finally:
            self.core.cancel(request)

    async def _publish_loop(self, ws: aiohttp.ClientWebSocketResponse, reader: asyncio.Task) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        failures = 0
        while not self.stopping and not reader.done():
            if not self.publishing.is_set():
                self.parked = True
                try:
                    await self.publishing.wait()
                finally:
                    self.parked = False
                continue  # switched off again before this task woke up: park again
            room = self.rooms[self._count % len(self.rooms)]
            self._count += 1
            sent_ms = time.time() * 1000
            data = {"p": self.name, "n": self._count, "ts": sent_ms}
            if self.padding:
                data["pad"] = self.padding
            self.ledger.publish_attempts += 1
            reply = await self._request(ws, self.core.publish(room, data=data))
            if reply["type"] == "ack":
                self.ledger.ack(room, reply["epoch"], reply["seq"], sent_ms)
                failures = 0
            else:
                code = reply.get("code", "?")
                self.ledger.error(code, {"url": self.url, "during": "publish", **reply})
                if code == RATE_LIMIT_EXCEEDED:
                    await asyncio.sleep(float(reply.get("retryAfter") or 0.05))
                else:  # BUS_UNAVAILABLE and the rest: back off, then carry on with the next message
                    await asyncio.sleep(self.backoff.delay_s(failures + 1))
                    failures += 1
                next_at = loop.time()
                continue
            next_at += self.interval_s
            wait_s = next_at - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            else:
                next_at = loop.time()  # behind schedule: do not burst to catch up
