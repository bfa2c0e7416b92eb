"""The worker's side of the control plane: heartbeat reporter and command follower.

Owns, for one worker, the periodic heartbeat to Redis (id, URL, state,
connections, hosted rooms with member counts, CPU, RSS, steering progress)
and following the control plane's per-worker command key, which the same
round trip reads back: drain (leave, steer every client to its room's new
owner, become `drained`), undrain (accept again) and rebalance (steer the
members of rooms this worker no longer owns). Key names come from
`common.keys`; the pace of every move from `node.steering`.

It must not subscribe to any pub/sub channel, hash rooms itself (the ring
does), or decide membership (the control plane does). If Redis is down the
worker keeps serving; heartbeats resume when it returns.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time
from typing import TYPE_CHECKING

import psutil
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.keys import ACTIVE, DRAINED, DRAINING, Keys
from node import steering
from node.connection import Connection
from router.ring import EmptyRing, Ring

if TYPE_CHECKING:  # the worker imports this module; only type checkers look back
    from node.worker import Worker

log = logging.getLogger("ringcast.heartbeat")

# One round trip: write the heartbeat, stamp it with Redis' clock (no skew between
# hosts), replace the room report, and read this worker's command back.
_BEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now)
redis.call('DEL', KEYS[3])
if #ARGV > 3 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 4))
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return {now, redis.call('GET', KEYS[4])}
"""

RING_WAIT_S = 5.0  # longest a drain/rebalance waits for the ring epoch its command names
RING_RETRY_S = 0.05


class HeartbeatReporter:
    def __init__(self, worker: "Worker") -> None:
        config = worker.config
        self.worker = worker
        self.keys = Keys(config.key_prefix)
        self.interval_s = config.control_heartbeat_interval_s
        self.url = f"ws://{config.host}:{config.port}/ws"
        self.redis = aioredis.Redis.from_url(
            config.redis, socket_timeout=config.bus_timeout_s, socket_connect_timeout=config.bus_timeout_s
        )
        self.beat_script = self.redis.register_script(_BEAT_SCRIPT)
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first reading only starts the measurement
        self.started_at_ms = int(time.time() * 1000)
        self.command_version: int | None = None  # last command version acted on; None before the first read
        self.rebalance_generation: int | None = None
        self.progress: steering.SteeringProgress | None = None
        self.task: asyncio.Task | None = None  # the drain or rebalance in progress
        self.following = True

    # --- reporting ---------------------------------------------------------------

    def report(self) -> dict:
        worker = self.worker
        hub = worker.hub
        memory = self.process.memory_info()
        return {
            "id": worker.worker_id,
            "url": self.url,
            "state": worker.state,
            "connections": len(worker.connections),
            "rooms": len(hub.rooms) if hub is not None else 0,
            "cpuPercent": self.process.cpu_percent(None),
            "rssBytes": memory.rss,
            "pid": os.getpid(),
            "startedAtMs": self.started_at_ms,
            "commandVersion": self.command_version,
            "rebalanceGeneration": self.rebalance_generation,
            "steering": self.progress.to_dict() if self.progress is not None else None,
        }

    def room_counts(self) -> list[str]:
        """The most populated hosted rooms (bounded), flattened for HSET."""
        hub = self.worker.hub
        if hub is None:
            return []
        limit = self.worker.config.heartbeat_max_rooms_reported
        top = heapq.nlargest(limit, hub.rooms.items(), key=lambda item: len(item[1].members))
        flat: list[str] = []
        for room, entry in top:
            flat += [room, str(len(entry.members))]
        return flat

    async def beat(self) -> dict | None:
        """One heartbeat; returns the command read back (None when there is none)."""
        node_id = self.worker.worker_id
        rooms_ttl_ms = int(max(self.interval_s * 5, 5.0) * 1000)
        _now_ms, raw = await self.beat_script(
            keys=[self.keys.heartbeats, self.keys.seen, self.keys.rooms(node_id), self.keys.command(node_id)],
            args=[node_id, json.dumps(self.report(), separators=(",", ":")), rooms_ttl_ms, *self.room_counts()],
        )
        return json.loads(raw) if raw else None

    async def run(self) -> None:
        while True:
            try:
                command = await self.beat()
                if command is not None and self.following:
                    self.follow(command)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.warning("heartbeat to Redis failed (%s); still serving on the last ring", exc)
            except Exception:
                log.exception("bug in the heartbeat loop")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        self.stop_following()
        await self.redis.aclose()

    def stop_following(self) -> None:
        """Shutdown takes over: no more drains or rebalances, and cancel the one in progress."""
        self.following = False
        if self.task is not None:
            self.task.cancel()

    # --- following commands ----------------------------------------------------------

    def follow(self, command: dict) -> None:
        version = int(command.get("version", 0))
        generation = int(command.get("rebalance", 0))
        worker = self.worker
        if version != self.command_version:
            self.command_version = version
            wanted = command.get("state", ACTIVE)
            if wanted == DRAINING and worker.state == ACTIVE:
                self._start(self._drain(command, version))
            elif wanted == ACTIVE and worker.state in (DRAINING, DRAINED):
                self._cancel()
                worker.state = ACTIVE
                log.info("worker %s undrained: accepting connections again", worker.worker_id)
        if self.rebalance_generation is None:
            self.rebalance_generation = generation  # a (re)started worker does not replay old rebalances
        elif generation > self.rebalance_generation:
            self.rebalance_generation = generation
            if worker.state == ACTIVE and (self.task is None or self.task.done()):
                self._start(self._rebalance(command, generation))

    def _start(self, coro) -> None:
        self._cancel()
        self.task = asyncio.ensure_future(coro)

    def _cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None

    async def _ring_at_least(self, epoch: int) -> Ring | None:
        """The worker's ring (placement's copy, polled from Redis) once its epoch reaches `epoch`.

        None if it does not get there within RING_WAIT_S: the clients are then told
        to ask the router instead of being sent to a stale owner.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RING_WAIT_S
        while True:
            ring = self.worker.placement.ring
            if ring.epoch >= epoch and len(ring):
                return ring
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(RING_RETRY_S)

    @staticmethod
    def _owner_url(ring: Ring | None, conn: Connection, me: str) -> str | None:
        """Where `conn` should go: the owner of its (first, by name) room; None means ask the router."""
        if ring is None or not conn.rooms:
            return None
        try:
            owner = ring.route(min(conn.rooms))
        except EmptyRing:
            return None
        return None if owner.id == me else owner.url

    def successor_ring(self, ring: Ring | None = None) -> Ring | None:
        """The ring the control plane will publish once this worker has left: the current one
        without it (consistent hashing gives every other room the same owner). None if empty."""
        ring = self.worker.placement.ring if ring is None else ring
        me = self.worker.worker_id
        if me not in ring:
            return ring if len(ring) else None
        others = [member for member in ring.members.values() if member.id != me]
        return Ring(others, ring.epoch) if others else None

    def successor_targets(self):
        """For a shutdown: each connection's target in the successor ring (computed once)."""
        ring = self.successor_ring()
        me = self.worker.worker_id
        return lambda conn: self._owner_url(ring, conn, me)

    async def _drain(self, command: dict, version: int) -> None:
        worker = self.worker
        me = worker.worker_id
        worker.state = DRAINING  # from here /readyz is 503 and upgrades are refused
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(command.get("drainTimeoutS", 30.0))
        progress = self.progress = steering.SteeringProgress("drain", generation=version)
        log.info("worker %s draining %d connections", me, len(worker.connections))
        # The published ring without this worker; if it is late, the current one minus this worker.
        ring = self.successor_ring(await self._ring_at_least(int(command.get("ringEpoch", 0))))
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await steering.steer_away(
                    list(worker.connections.values()), reason="drain",
                    window_s=float(command.get("drainWindowS", 5.0)),
                    max_rate_per_s=worker.config.steer_max_rate_per_s,
                    jitter_ms=worker.config.reconnect_jitter_ms,
                    target_url=lambda conn: self._owner_url(ring, conn, me),
                    notify=worker.steer_notice, progress=progress,
                )
                while worker.connections:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("worker %s: drain deadline reached with %d connections; cutting them", me, len(worker.connections))
            for conn in list(worker.connections.values()):
                conn.transport.abort()
        progress.finished_at_ms = progress.finished_at_ms or int(time.time() * 1000)
        worker.state = DRAINED
        log.info("worker %s drained", me)

    async def _rebalance(self, command: dict, generation: int) -> None:
        worker = self.worker
        me = worker.worker_id
        progress = self.progress = steering.SteeringProgress("rebalance", generation=generation)
        ring = await self._ring_at_least(int(command.get("ringEpoch", 0)))
        if ring is None or me not in ring:
            progress.finished_at_ms = int(time.time() * 1000)
            return  # not placed (or no ring): nothing this worker owns can be said to have moved
        # A connection moves only when none of its rooms is owned here any more.
        movers = [
            conn for conn in worker.connections.values()
            if conn.rooms and not conn.closed and all(ring.owner_id(room) != me for room in conn.rooms)
        ]
        log.info("worker %s rebalance %d: %d connections to move (ring epoch %d)", me, generation, len(movers), ring.epoch)
        await steering.steer_away(
            movers, reason="rebalance", window_s=float(command.get("rebalanceWindowS", 5.0)),
            max_rate_per_s=worker.config.steer_max_rate_per_s, jitter_ms=worker.config.reconnect_jitter_ms,
            target_url=lambda conn: self._owner_url(ring, conn, me), notify=worker.steer_notice, progress=progress,
        )
