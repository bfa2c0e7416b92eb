"""Steering clients away from a worker: reconnect notices at a bounded pace, with jitter.

Owns the one rule every "move these clients" path follows (graceful shutdown,
drain, rebalance): shuffle the connections, send each a `reconnect` frame
(reason, optional target URL, random `delayMs`) and close it with 1001,
spreading the notices over a window and never faster than a rate cap, so a
move never becomes a reconnect storm. Progress is kept in a small record the
heartbeat reports (`common.records.SteeringReport`).

It also owns the "where" rule, given a ring: a client goes to the owner of
its first room by name, and nowhere (ask the router) without a ring or a
room; a worker that leaves steers by the ring without itself, which is the
one the control plane will publish. It does not decide *which* clients move
(the worker does) nor hash rooms (`router.ring` does), and it never changes
the worker's state.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from common.records import SteeringReport
from node import protocol
from node.connection import Connection
from router.ring import EmptyRing, Ring

RING_WAIT_S = 5.0  # longest a drain/rebalance waits for the ring epoch its command names
RING_RETRY_S = 0.05

TargetFn = Callable[[Connection], str | None]  # a connection -> its target URL (None: ask the router)


@dataclass
class SteeringProgress:
    """How far one steering run has got, updated as it goes; heartbeats carry its `report()`."""

    kind: str  # "shutdown", "drain" or "rebalance"
    total: int = 0  # connections selected to move
    steered: int = 0  # reconnect notices sent so far
    started_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_at_ms: int | None = None
    generation: int = 0  # the rebalance generation (or command version) this run answers

    def report(self) -> SteeringReport:
        """A frozen copy for the heartbeat."""
        return SteeringReport(
            self.kind, self.total, self.steered, self.started_at_ms, self.finished_at_ms, self.generation
        )

    def to_dict(self) -> dict:
        return self.report().to_dict()


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
    target_url: TargetFn,
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


# --- where a client goes -------------------------------------------------------------


def owner_url(ring: Ring | None, conn: Connection, me: str) -> str | None:
    """Where `conn` should go: the owner of its (first, by name) room; None means ask the router."""
    if ring is None or not conn.rooms:
        return None
    try:
        owner = ring.route(min(conn.rooms))
    except EmptyRing:
        return None
    return None if owner.id == me else owner.url


def owners_in(ring: Ring | None, me: str) -> TargetFn:
    """`target_url` for steer_away: each connection's room owner in `ring`."""
    return lambda conn: owner_url(ring, conn, me)


def successor_ring(ring: Ring, me: str) -> Ring | None:
    """The ring the control plane will publish once worker `me` has left: `ring` without it
    (consistent hashing gives every other room the same owner). None if that is empty."""
    if me not in ring:
        return ring if len(ring) else None
    others = [member for member in ring.members.values() if member.id != me]
    return Ring(others, ring.epoch) if others else None


async def ring_at_least(current: Callable[[], Ring], epoch: int, wait_s: float = RING_WAIT_S) -> Ring | None:
    """`current()` (a worker's copy of the ring, polled from Redis) once its epoch reaches `epoch`.

    None if it does not get there within `wait_s`: the clients are then told
    to ask the router instead of being sent to a stale owner.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        ring = current()
        if ring.epoch >= epoch and len(ring):
            return ring
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(RING_RETRY_S)
