"""Steering clients away from a worker: reconnect notices at a bounded pace, with jitter.

Owns the one rule every "move these clients" path follows (graceful shutdown,
drain, rebalance): shuffle the connections, send each a `reconnect` frame
(reason, optional target URL, random `delayMs`) and close it with 1001,
spreading the notices over a window and never faster than a rate cap, so a
move never becomes a reconnect storm. Progress is kept in a small record the
heartbeat reports. It does not decide *which* clients move or *where*: the
caller passes the connections and a function giving each one's target.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from node import protocol
from node.connection import Connection


@dataclass
class SteeringProgress:
    """How far one steering run has got; reported in heartbeats as-is."""

    kind: str  # "shutdown", "drain" or "rebalance"
    total: int = 0  # connections selected to move
    steered: int = 0  # reconnect notices sent so far
    started_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_at_ms: int | None = None
    generation: int = 0  # the rebalance generation (or command version) this run answers

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "total": self.total, "steered": self.steered,
            "startedAtMs": self.started_at_ms, "finishedAtMs": self.finished_at_ms,
            "done": self.finished_at_ms is not None, "generation": self.generation,
        }


def pace_s(count: int, window_s: float, max_rate_per_s: float | None) -> float:
    """Seconds between two consecutive notices: the window spread, slowed to the rate cap."""
    spread = window_s / count if count else 0.0
    if max_rate_per_s:
        return max(spread, 1.0 / max_rate_per_s)
    return spread


async def steer_away(
    connections: Iterable[Connection],
    *,
    reason: str,
    window_s: float,
    max_rate_per_s: float | None,
    jitter_ms: int,
    target_url: Callable[[Connection], str | None],
    notify: Callable[[Connection, dict], None],
    progress: SteeringProgress,
) -> SteeringProgress:
    """Send every connection a reconnect notice (via `notify`, which also closes it), paced.

    Connections already closed when their turn comes are skipped but counted,
    so `steered == total` at the end either way.
    """
    conns = list(connections)
    random.shuffle(conns)  # no room or client is systematically first or last
    progress.total = len(conns)
    loop = asyncio.get_running_loop()
    started = loop.time()
    step_s = pace_s(len(conns), window_s, max_rate_per_s)
    for index, conn in enumerate(conns):
        due = started + step_s * index
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        if not conn.closed:
            delay_ms = random.randint(0, jitter_ms) if jitter_ms > 0 else 0
            notify(conn, protocol.reconnect(reason, delay_ms, target_url(conn)))
        progress.steered += 1
    progress.finished_at_ms = int(time.time() * 1000)
    return progress
