"""Write coalescing: frames queued for a socket leave in one write, held a little longer while the worker is busy.

Owns the worker-wide list of connections with frames waiting and the single
flush that writes them. Kernel time dominates fan-out, so one `write` per
socket per flush (instead of one per frame) is the difference between a few
thousand and a few hundred thousand deliveries per second.

When the flush happens (adaptive coalescing):

- idle worker: at the end of the loop turn in which the first frame was
  queued, so a quiet worker adds no latency;
- busy worker: a flush that cost `c` seconds, of whose sockets a fraction
  `r` had been written by the flush just before it too, is followed by
  `BUSY_HOLD_FACTOR * c * r` seconds in which frames are only queued, never
  more than `max_hold_s` after the first of them. `r` says whether holding
  pays: a big room's members get every message, so each flush writes the
  same sockets again (`r` near 1) and a single steady publisher's messages
  share one write per member instead of one each, writing taking at most
  1 / (1 + BUSY_HOLD_FACTOR) of the loop's time. Many small rooms spread the
  frames over sockets that get one now and then (`r` near 0): a hold would
  find no second frame to share a write with and only add latency (it fed
  on itself: a held flush is bigger and costs more, so the next hold was
  longer, up to `max_hold_s`). The worker is "busy" exactly when a frame is
  queued before that quiet time since the last flush has passed; the hold
  is the rest of it.
- `coalesce_delay_s` > 0 (the fixed window, `--write-coalesce-ms`) replaces
  the rule: every frame waits that long.

It also owns the slow-consumer bound: after a flush, a socket whose
user-space buffer holds more than `max_outbound_bytes` is reported to
`on_overflow`. `flush_one` writes one connection's queue at once (before a
close frame, which must come after it).

It must not encode anything: it moves finished frame bytes.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Callable, Protocol

# A flush that took c seconds and wrote to a fraction r of sockets the flush before it wrote to too is followed
# by BUSY_HOLD_FACTOR * c * r seconds of queueing (bounded by max_hold_s) when frames arrive in that time:
# in a big room (r near 1) writing then takes at most a third of a busy loop.
BUSY_HOLD_FACTOR = 2.0


class Writable(Protocol):
    """What the outbox needs from a connection."""

    pending: list[bytes]
    flushed_in: int  # the number of the flush that last wrote to it (-1: none yet; flushes count from 1)
    closed: bool
    transport: asyncio.Transport


class Outbox:
    def __init__(
        self, max_outbound_bytes: int, on_overflow: Callable[[Writable, int], None], coalesce_delay_s: float = 0.0,
        max_hold_s: float = 0.0,
    ) -> None:
        """`max_hold_s`: the longest a busy worker holds a frame for others (0: never, flush every turn);
        `coalesce_delay_s` > 0 holds every frame that long instead."""
        self.max_outbound_bytes = max_outbound_bytes
        self.coalesce_delay_s = coalesce_delay_s
        self.max_hold_s = max_hold_s
        self.on_overflow = on_overflow
        self._dirty: list[Writable] = []
        self._scheduled = False
        self._quiet_until = 0.0  # perf_counter() before which a new frame is held (the busy rule)
        self._flushes = 0  # flushes so far; a connection's `flushed_in` is the number of the last that wrote to it
        self._loop = asyncio.get_running_loop()

    def push(self, conn: Writable, frame: bytes) -> None:
        """Queue one finished frame for `conn`; it leaves at the next flush (see the module docstring)."""
        if conn.closed:
            return
        if not conn.pending:
            self._dirty.append(conn)
        conn.pending.append(frame)
        if not self._scheduled:
            self._scheduled = True
            if self.coalesce_delay_s:
                self._loop.call_later(self.coalesce_delay_s, self.flush)
                return
            hold = self._quiet_until - perf_counter()
            if hold > 0.0:
                self._loop.call_later(min(hold, self.max_hold_s), self.flush)
            else:
                self._loop.call_soon(self.flush)

    def flush_one(self, conn: Writable) -> None:
        """Write `conn`'s queue now (before a close frame, which must come last)."""
        frames = conn.pending
        if not frames:
            return
        conn.pending = []
        if conn.closed or conn.transport.is_closing():
            return
        conn.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def flush(self) -> None:
        started = perf_counter()
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        limit = self.max_outbound_bytes
        previous = self._flushes
        this = self._flushes = previous + 1
        written = repeated = 0
        for conn in dirty:
            frames = conn.pending
            if not frames:
                continue
            conn.pending = []
            transport = conn.transport
            if conn.closed or transport.is_closing():
                continue
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
            written += 1
            if conn.flushed_in == previous:
                repeated += 1
            conn.flushed_in = this
            buffered = transport.get_write_buffer_size()
            if buffered > limit:
                self.on_overflow(conn, buffered)
        if self.max_hold_s and written:
            ended = perf_counter()
            self._quiet_until = ended + BUSY_HOLD_FACTOR * (ended - started) * repeated / written
