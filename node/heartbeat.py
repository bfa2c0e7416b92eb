"""The worker's side of the control plane: heartbeat reporter and command follower.

Owns, for one worker, the periodic heartbeat to Redis (a `common.records.Heartbeat`:
id, public URL, internal address, state, connections, hosted rooms with member counts, CPU, RSS,
steering progress) and following the control plane's per-worker command (a
`common.records.Command`), which the same round trip reads back: a new
version asks for a drain or an undrain, a higher rebalance generation for a
rebalance. It turns them into calls of the worker's `drain`, `undrain` and
`rebalance`, and owns the task of the one in progress (cancelled by an
undrain or by shutdown). Key names come from `common.keys`.

It must not change the worker's state itself (the worker's methods do),
steer clients (the worker and `node.steering` do), subscribe to any pub/sub
channel, hash rooms (the ring does), or decide membership (the control plane
does). If Redis is down the worker keeps serving; heartbeats resume when it
returns.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from typing import TYPE_CHECKING

import psutil
from redis.exceptions import RedisError

from common.keys import ACTIVE, DRAINING, Keys
from common.records import Command, Heartbeat, MalformedRecord
from common.redis_connect import RedisTarget
from node import steering

if TYPE_CHECKING:  # the worker imports this module; only type checkers look back
    from node.worker import Worker

log = logging.getLogger("ringcast.heartbeat")

# One round trip: write the heartbeat, stamp it with Redis' clock (no skew between
# hosts), replace the room report, and read this worker's command back. The report
# (ARGV[4..]: room, count, room, count, ...) is written in chunks of ROOM_CHUNK_VALUES:
# Lua's unpack() fails past a few thousand values ("too many results to unpack"),
# which would fail the whole script and with it the command read.
ROOM_CHUNK_VALUES = 1000
_BEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now)
redis.call('DEL', KEYS[3])
if #ARGV > 3 then
  for i = 4, #ARGV, %d do
    redis.call('HSET', KEYS[3], unpack(ARGV, i, math.min(i + %d, #ARGV)))
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return {now, redis.call('GET', KEYS[4])}
""" % (ROOM_CHUNK_VALUES, ROOM_CHUNK_VALUES - 1)

# What a worker assumes when its command leaves a field out (a command written before any drain or rebalance).
DEFAULT_DRAIN_WINDOW_S = 5.0
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_REBALANCE_WINDOW_S = 5.0


class HeartbeatReporter:
    def __init__(self, worker: "Worker") -> None:
        config = worker.config
        self.worker = worker
        target = RedisTarget.from_settings(config)  # on redis+cluster://, a RedisCluster client and tagged keys
        self.keys = Keys(config.key_prefix, cluster=target.cluster)
        self.interval_s = config.control_heartbeat_interval_s
        self.url = config.url  # the public URL clients are given (--public-url)
        self.address = config.address  # the internal HOST:PORT the control plane and Prometheus reach
        self.redis = target.client(timeout_s=config.bus_timeout_s)
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

    def report(self) -> Heartbeat:
        worker = self.worker
        hub = worker.hub
        return Heartbeat(
            id=worker.worker_id,
            url=self.url,
            state=worker.state,
            address=self.address,
            connections=len(worker.connections),
            rooms=len(hub.rooms) if hub is not None else 0,
            cpu_percent=self.process.cpu_percent(None),
            rss_bytes=self.process.memory_info().rss,
            pid=os.getpid(),
            started_at_ms=self.started_at_ms,
            command_version=self.command_version,
            rebalance_generation=self.rebalance_generation,
            steering=self.progress.report() if self.progress is not None else None,
        )

    def room_counts(self) -> list[str]:
        """The most populated hosted rooms (at most heartbeat_max_rooms_reported), flattened for HSET."""
        hub = self.worker.hub
        if hub is None:
            return []
        limit = self.worker.config.heartbeat_max_rooms_reported
        top = heapq.nlargest(limit, hub.rooms.items(), key=lambda item: len(item[1].members))
        flat: list[str] = []
        for room, entry in top:
            flat += [room, str(len(entry.members))]
        return flat

    async def beat(self) -> Command | None:
        """One heartbeat; returns the command read back (None when there is none).

        Raises MalformedRecord if the command cannot be read (the heartbeat is written all the same).
        """
        node_id = self.worker.worker_id
        rooms_ttl_ms = int(max(self.interval_s * 5, 5.0) * 1000)
        _now_ms, raw = await self.beat_script(
            keys=[self.keys.heartbeats, self.keys.seen, self.keys.rooms(node_id), self.keys.command(node_id)],
            args=[node_id, self.report().to_json(), rooms_ttl_ms, *self.room_counts()],
        )
        return Command.from_json(raw) if raw else None

    async def run(self) -> None:
        while True:
            try:
                command = await self.beat()
                if command is not None and self.following:
                    self.follow(command)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.warning("heartbeat to Redis failed (%s); still serving on the last ring", exc)
            except MalformedRecord as exc:
                log.warning("ignoring the control plane's command for this worker: %s", exc)
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

    def follow(self, command: Command) -> None:
        worker = self.worker
        if command.version != self.command_version:
            self.command_version = command.version
            if command.state == DRAINING and worker.accepting:
                self._start(self._drain(command))
            elif command.state == ACTIVE and worker.undrain():
                self._cancel()  # the drain that was under way, if any
        generation = command.rebalance or 0
        if self.rebalance_generation is None:
            self.rebalance_generation = generation  # a (re)started worker does not replay old rebalances
        elif generation > self.rebalance_generation:
            self.rebalance_generation = generation
            if worker.accepting and (self.task is None or self.task.done()):
                self._start(self._rebalance(command, generation))

    def _start(self, coro) -> None:
        self._cancel()
        self.task = asyncio.ensure_future(coro)

    def _cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None

    async def _drain(self, command: Command) -> None:
        self.progress = steering.SteeringProgress("drain", generation=command.version)
        await self.worker.drain(
            ring_epoch=command.ring_epoch or 0,
            window_s=_or(command.drain_window_s, DEFAULT_DRAIN_WINDOW_S),
            timeout_s=_or(command.drain_timeout_s, DEFAULT_DRAIN_TIMEOUT_S),
            progress=self.progress,
        )

    async def _rebalance(self, command: Command, generation: int) -> None:
        self.progress = steering.SteeringProgress("rebalance", generation=generation)
        await self.worker.rebalance(
            ring_epoch=command.ring_epoch or 0,
            window_s=_or(command.rebalance_window_s, DEFAULT_REBALANCE_WINDOW_S),
            progress=self.progress,
        )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
