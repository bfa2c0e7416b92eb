"""Verifying, resuming drill clients: room members that check every message, publishers that count acks.

Owns what the delivery promise looks like from a client under faults, at
drill sizes (thousands of sockets in one asyncio process):

- `RoomMember` holds one WebSocket in one room and keeps the last
  (seq, epoch) it accepted. It accepts only the next message of the stream;
  a repeat is a duplicate, a jump is a gap. On a gap while connected it
  re-joins with `since` (leave + join) so the server replays what it missed;
  on any disconnect it reconnects with backoff and jitter (honouring a
  `reconnect` frame's `delayMs` and `url`) and re-joins with `since`.
- `Publisher` publishes at a steady pace with an `id` on every message and
  counts a message as sent only when its `ack` arrives; BUS_UNAVAILABLE,
  rate limits and disconnects are retried, never counted as sent.
- `Ledger` is the shared record both write into: acked positions, what each
  member accepted, delivery and latency samples, client-visible errors.

It must not start or stop servers (the scenarios do) nor judge pass or fail
(chaos/drill_measure.py does).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from array import array
from dataclasses import dataclass

import aiohttp
import orjson

BUS_UNAVAILABLE = "BUS_UNAVAILABLE"
RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
JOIN_TIMEOUT_S = 10.0  # a join (or an ack) slower than this counts as a lost connection


@dataclass(frozen=True)
class Backoff:
    """How a drill client waits before reconnecting after a disconnect it was not warned about."""

    first_jitter_s: float = 0.5  # first retry after a random 0..first_jitter_s: spreads a mass disconnect
    base_s: float = 0.1  # then base_s * 2**attempt, "equal jitter" (half fixed, half random)
    cap_s: float = 2.0  # longest wait between two attempts

    def delay_s(self, attempt: int) -> float:
        if attempt == 0:
            return random.uniform(0.0, self.first_jitter_s)
        delay = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        return random.uniform(delay / 2, delay)


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
    """The shared reconnect loop of members and publishers: connect, run a session, wait, repeat."""

    def __init__(self, ledger: Ledger, session: aiohttp.ClientSession, urls: list[str], home: int, backoff: Backoff):
        self.ledger = ledger
        self.session = session
        self.urls = urls
        self.url = urls[home % len(urls)]  # where it connects next: its home, a notice's url, or the next one
        self.backoff = backoff
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.stopping = False
        self.redirect_url: str | None = None  # from a `reconnect` frame
        self.notice_delay_s: float | None = None  # from a `reconnect` frame
        self.dropped_by_us = False  # abort() cut the socket: its close code is not the server's doing
        self.left_by_choice = False  # the session ended on our decision (a notice, a failed join): not a cut
        self.last_notice_url: str | None = None

    async def run(self) -> None:
        attempt = 0
        while not self.stopping:
            if self.redirect_url:
                self.url, self.redirect_url = self.redirect_url, None  # the server said where to go: stay there
            url = self.url
            try:
                ws = await self.session.ws_connect(url, autoping=True, max_msg_size=0)
            except aiohttp.WSServerHandshakeError as exc:  # 429 per-IP cap, 503 not accepting
                self.ledger.error(f"http_{exc.status}", {"url": url, "message": exc.message,
                                                         "after_notice": url == self.last_notice_url})
                ws = None
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                self.ledger.error("connect_failed")
                ws = None
            if ws is None:
                self._next_url()  # try the next worker
                await asyncio.sleep(self.backoff.delay_s(attempt + 1))
                attempt += 1
                continue
            self.ws = ws
            served = False
            try:
                served = await self.session_on(ws)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                self.ws = None
                self.on_disconnected()
                if not ws.closed:
                    await ws.close()
            if self.stopping:
                return
            if ws.close_code not in (None, 1000, 1001) and not (self.dropped_by_us or self.left_by_choice):
                self.ledger.error(f"close_{ws.close_code}")  # the server cut us (or the socket died)
            self.dropped_by_us = self.left_by_choice = False
            if self.notice_delay_s is not None:  # the server said how long to wait
                delay, self.notice_delay_s = self.notice_delay_s, None
                attempt = 0
            else:
                attempt = 0 if served else attempt + 1
                delay = self.backoff.delay_s(attempt)
            await asyncio.sleep(delay)

    def _next_url(self) -> None:
        index = self.urls.index(self.url) if self.url in self.urls else -1
        self.url = self.urls[(index + 1) % len(self.urls)]

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

    async def session_on(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Serve one connection; True if it got as far as being joined."""
        raise NotImplementedError

    def on_disconnected(self) -> None:
        pass

    def follow_notice(self, frame: dict) -> None:
        self.ledger.errors["reconnect_notice"] += 1  # not an error, but client-visible: counted with them
        self.left_by_choice = True
        self.notice_delay_s = float(frame.get("delayMs", 0)) / 1000
        self.redirect_url = self.last_notice_url = frame.get("url")
        if not self.redirect_url:
            self.ledger.errors["reconnect_notice_without_url"] += 1


class RoomMember(_Connection):
    """One resuming member of one room that verifies the order and completeness of what it receives."""

    def __init__(self, ledger: Ledger, session: aiohttp.ClientSession, urls: list[str], home: int, room: str,
                 backoff: Backoff) -> None:
        super().__init__(ledger, session, urls, home, backoff)
        self.room = room
        self.stream = _Stream()
        self.joined_once = asyncio.Event()
        self.connected = False
        self.live = False  # False between sending a join and its `joined`: messages then are not ours to judge
        self.accept_jump = False  # the server declared a gap (recovered:false); the next message restarts the stream
        self.first_after_fault_s: float | None = None
        self.ever_disconnected = False
        self.join_failures = 0  # consecutive refused joins (reset by a `joined`)

    def on_disconnected(self) -> None:
        self.live = False
        if self.connected:
            self.connected = False
            self.ledger.connected -= 1
            if not self.stopping:
                self.ledger.disconnects.append(self.ledger.now())
                self.ever_disconnected = True

    def _join_frame(self) -> str:
        frame: dict = {"type": "join", "room": self.room}
        if self.stream.epoch is not None:
            frame["since"] = {"seq": self.stream.last_seq, "epoch": self.stream.epoch}
        return orjson.dumps(frame).decode()

    async def session_on(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        await ws.send_str(self._join_frame())
        served = False
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = orjson.loads(msg.data)
            kind = frame.get("type")
            if kind == "message":
                if self.live and frame.get("room") == self.room:
                    await self._on_message(ws, frame)
            elif kind == "joined":
                served = True
                self._on_joined(frame)
            elif kind == "reconnect":
                self.follow_notice(frame)
                break
            elif kind == "error":
                code = frame.get("code", "?")
                self.ledger.error(code, {"url": str(ws._response.url), "during": "join" if not self.live else "member",
                                         **frame})
                if not self.live:  # the join failed (BUS_UNAVAILABLE): try it again on this connection, later
                    self.join_failures += 1
                    delay = self.backoff.delay_s(min(self.join_failures, 6))
                    asyncio.get_running_loop().call_later(delay, self._retry_join, ws)
        return served

    def _retry_join(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if not ws.closed and ws is self.ws and not self.live:
            asyncio.ensure_future(self._send_quietly(ws, self._join_frame()))

    @staticmethod
    async def _send_quietly(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
        try:
            await ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass  # the read loop sees the closed socket and reconnects

    def _on_joined(self, frame: dict) -> None:
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
        self.live = True
        self.joined_once.set()

    async def _on_message(self, ws: aiohttp.ClientWebSocketResponse, frame: dict) -> None:
        stream = self.stream
        seq, epoch = frame["seq"], frame["epoch"]
        if self.accept_jump:
            self.accept_jump = False
            if epoch != stream.epoch or seq != stream.last_seq + 1:
                self.ledger.declared_losses += 1
                stream.start(epoch, seq - 1)
        elif epoch == stream.epoch:
            if seq <= stream.last_seq:
                self.ledger.duplicates += 1
                return
            if seq != stream.last_seq + 1:
                await self._rejoin(ws, epoch, seq)
                return
        elif epoch in stream.intervals:
            self.ledger.out_of_order += 1
            return
        elif seq == 1:
            stream.start(epoch, 0)  # a new stream: the room's state was lost (e.g. Redis restarted empty)
        else:
            await self._rejoin(ws, epoch, seq)
            return
        stream.accept(seq)
        data = frame.get("data")
        sent_ms = data.get("ts") if isinstance(data, dict) else None
        self.ledger.delivered(sent_ms)
        if self.first_after_fault_s is None and self.ledger.fault_end_ms is not None and sent_ms is not None \
                and sent_ms >= self.ledger.fault_end_ms:
            self.first_after_fault_s = self.ledger.now()

    async def _rejoin(self, ws: aiohttp.ClientWebSocketResponse, epoch: str, seq: int) -> None:
        """A gap on a live connection: leave and join again with `since`, so the server replays the missing part."""
        self.ledger.gaps_while_connected += 1
        if len(self.ledger.gap_samples) < 10:
            self.ledger.gap_samples.append({"t": round(self.ledger.now(), 3), "room": self.room, "url": str(ws._response.url),
                                            "last": [self.stream.epoch, self.stream.last_seq], "got": [epoch, seq]})
        self.live = False
        await ws.send_str(orjson.dumps({"type": "leave", "room": self.room}).decode())
        await ws.send_str(self._join_frame())


class Publisher(_Connection):
    """Publishes to its rooms in turn at a steady pace; a message counts as sent only once acked."""

    def __init__(self, ledger: Ledger, session: aiohttp.ClientSession, urls: list[str], home: int, name: str,
                 rooms: list[str], rate_per_s: float, payload_bytes: int, backoff: Backoff) -> None:
        super().__init__(ledger, session, urls, home, backoff)
        self.name = name
        self.rooms = rooms
        self.interval_s = 1.0 / rate_per_s
        self.padding = "x" * payload_bytes
        self.publishing = asyncio.Event()
        self.parked = False  # waiting for `publishing`, nothing in flight: every ack it will ever get is in
        self.ready = asyncio.Event()  # joined to all its rooms at least once
        self.connected = False
        self._waiting: dict[str, asyncio.Future] = {}
        self._count = 0

    def on_disconnected(self) -> None:
        self.connected = False
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self._waiting.clear()

    async def _request(self, ws: aiohttp.ClientWebSocketResponse, frame: dict) -> dict:
        request_id = frame["id"]
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await ws.send_str(orjson.dumps(frame).decode())
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                return await future
        finally:
            self._waiting.pop(request_id, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                frame = orjson.loads(msg.data)
                kind = frame.get("type")
                if kind == "reconnect":
                    self.follow_notice(frame)
                    break
                future = self._waiting.get(str(frame.get("id")))
                if future is not None and not future.done():
                    future.set_result(frame)
        finally:
            self.on_disconnected()

    async def session_on(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        reader = asyncio.create_task(self._read(ws))
        try:
            for room in self.rooms:
                for attempt in range(1, 20):  # a refused join (BUS_UNAVAILABLE) is retried on this connection
                    reply = await self._request(ws, {"type": "join", "room": room, "id": f"join:{room}"})
                    if reply["type"] != "error":
                        break
                    self.ledger.error(reply.get("code", "?"), {"url": str(ws._response.url), "during": "join", **reply})
                    await asyncio.sleep(self.backoff.delay_s(min(attempt, 6)))
                else:
                    self.left_by_choice = True
                    return False
            self.connected = True
            self.ready.set()
            await self._publish_loop(ws, reader)
            return True
        except TimeoutError:
            self.ledger.error("reply_timeout")
            return False
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

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
            reply = await self._request(ws, {"type": "message", "room": room, "data": data, "id": str(self._count)})
            if reply["type"] == "ack":
                self.ledger.ack(room, reply["epoch"], reply["seq"], sent_ms)
                failures = 0
            else:
                code = reply.get("code", "?")
                self.ledger.error(code, {"url": str(ws._response.url), "during": "publish", **reply})
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
