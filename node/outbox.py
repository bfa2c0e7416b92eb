"""Write coalescing: every frame queued for a socket in one loop turn leaves in one write.

Owns the worker-wide list of connections with frames waiting and the single
end-of-turn flush. Kernel time dominates fan-out, so one `write` per socket
per turn (instead of one per frame) is the difference between a few thousand
and a few hundred thousand deliveries per second. It also owns the
slow-consumer bound: after a flush, a socket whose user-space buffer holds
more than `max_outbound_bytes` is reported to `on_overflow`.

It must not encode anything: it moves finished frame bytes.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol


class Writable(Protocol):
    """What the outbox needs from a connection."""

    pending: list[bytes]
    closed: bool
    transport: asyncio.Transport


class Outbox:
    def __init__(
        self, max_outbound_bytes: int, on_overflow: Callable[[Writable, int], None], coalesce_delay_s: float = 0.0
    ) -> None:
        self.max_outbound_bytes = max_outbound_bytes
        # 0: flush at the end of the current loop turn. > 0: hold frames that long, so
        # messages arriving one per turn (a single steady publisher) still share writes.
        self.coalesce_delay_s = coalesce_delay_s
        self.on_overflow = on_overflow
        self._dirty: list[Writable] = []
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def push(self, conn: Writable, frame: bytes) -> None:
        """Queue one finished frame for `conn`; it leaves at the end of this loop turn (or the delay)."""
        if conn.closed:
            return
        if not conn.pending:
            self._dirty.append(conn)
        conn.pending.append(frame)
        if not self._scheduled:
            self._scheduled = True
            if self.coalesce_delay_s:
                self._loop.call_later(self.coalesce_delay_s, self.flush)
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
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        limit = self.max_outbound_bytes
        for conn in dirty:
            frames = conn.pending
            if not frames:
                continue
            conn.pending = []
            transport = conn.transport
            if conn.closed or transport.is_closing():
                continue
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
            buffered = transport.get_write_buffer_size()
            if buffered > limit:
                self.on_overflow(conn, buffered)
