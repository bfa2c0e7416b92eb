"""The leader's work: keep the ring true, and carry out operator mutations.

Owns the leader's loop (each tick: read a snapshot, let the detector judge
it, write back changed membership records and events, publish a new ring
epoch when the members changed, and start an automatic rebalance when a
worker joined) and the mutations the API forwards to it: drain, undrain,
rebalance, forget a node. One lock serialises ticks and mutations, so they
never interleave their reads and writes. Only the lease holder runs any of
it; a follower only serves reads. Every write it makes is fenced by the lease
(`control.store`): when one is refused (another replica took the lease while
this one was paused or cut off), it stops leading at once and the tick or
mutation fails with `NotLeader`. It does no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import AsyncIterator

from redis.exceptions import RedisError

from control.config import ControlConfig
from control.detector import Assessment, MemberRecord, assess
from common.keys import ACTIVE, ALIVE, DRAINING
from common.records import Command
from control.lease import LeaderLease
from control.metrics import ControlMetrics
from control.store import ControlStore, NotLeader, Snapshot
from router.ring import Ring

log = logging.getLogger("ringcast.control.leader")


class UnknownNode(LookupError):
    pass


class NodeStillAlive(RuntimeError):
    pass


class Controller:
    def __init__(self, config: ControlConfig, store: ControlStore, lease: LeaderLease, metrics: ControlMetrics) -> None:
        self.config = config
        self.store = store
        self.lease = lease
        self.metrics = metrics
        self.lock = asyncio.Lock()
        # Highest epoch this replica has seen: if Redis comes back empty, epochs go on from here
        # instead of restarting at 1 (routers and clients compare epochs).
        self.highest_epoch = 0

    @contextlib.asynccontextmanager
    async def _leading(self) -> AsyncIterator[None]:
        """Hold the lock as the leader; a write refused by the fence makes this replica step down."""
        async with self.lock:
            if not self.lease.is_leader:
                raise NotLeader("not the lease holder")
            # Every write of this tick or mutation carries the token of the term it was decided in.
            self.store.fence = self.lease.value
            try:
                yield
            except NotLeader:
                self.lease.step_down()
                raise

    async def announce(self, detail: dict) -> None:
        """Log the `leader` event of the term just started (fenced like every other write)."""
        async with self._leading():
            await self.store.add_event("leader", None, detail)

    # --- the loop -----------------------------------------------------------------

    async def tick(self) -> Ring:
        async with self._leading():
            return await self._tick_locked()

    async def _tick_locked(self, snapshot: Snapshot | None = None) -> Ring:
        if not self.lease.is_leader:
            raise NotLeader("not the lease holder")
        snap = snapshot or await self.store.snapshot()
        verdict: Assessment = assess(
            snap.records, snap.heartbeats, snap.seen_ms, snap.now_ms,
            int(self.config.dead_after_s * 1000), int(self.config.rejoin_hold_down_s * 1000),
        )
        await self.store.write_records([verdict.records[i] for i in verdict.changed])
        generation = None
        for kind, node, detail in verdict.events:
            log.info("node %s %s %s", node, kind, detail)
            if kind == "dead":
                self.metrics.declared_dead.inc()
            await self.store.add_event(kind, node, detail)
            if kind in ("joined", "returned"):
                # Give it a command to start from, so the next rebalance generation is news to it.
                generation = await self.store.rebalance_generation() if generation is None else generation
                command = await self.store.command(node) or Command(version=0, state=verdict.records[node].desired)
                if command.rebalance is None:
                    command = dataclasses.replace(command, rebalance=generation)
                await self.store.set_command(node, command)
        base = snap.ring
        if base.epoch < self.highest_epoch:
            log.warning("ring in Redis has epoch %d, below %d seen before (Redis lost its data?); continuing from %d",
                        base.epoch, self.highest_epoch, self.highest_epoch)
            base = Ring(base.members.values(), self.highest_epoch)
        ring = base.with_members(verdict.ring_members)
        if ring is not snap.ring and (len(ring) or len(snap.ring)):  # never publish "empty" over "nothing"
            await self.store.publish_ring(ring)
            added = sorted(set(ring.members) - set(snap.ring.members))
            removed = sorted(set(snap.ring.members) - set(ring.members))
            self.metrics.ring_publications.inc()
            log.info("ring epoch %d: +%s -%s", ring.epoch, added, removed)
            await self.store.add_event("ring", None, {"epoch": ring.epoch, "added": added, "removed": removed,
                                                      "members": sorted(ring.members)})
            if added and self.config.auto_rebalance and len(snap.ring):
                await self._rebalance_locked(ring, verdict.records, reason="join")
        self.highest_epoch = max(self.highest_epoch, ring.epoch)
        self.metrics.observe(ring, verdict.records)
        self.metrics.ticks.inc()  # last: a reader seeing it grow knows every write of this tick is done
        return ring

    async def run(self) -> None:
        while True:
            if self.lease.is_leader:
                try:
                    await self.tick()
                except NotLeader as exc:  # logged by the store; the lease loop takes over from here
                    log.warning("leader tick stopped: %s", exc)
                except (RedisError, OSError) as exc:  # Redis down: the workers keep the last ring meanwhile
                    log.warning("leader tick could not reach Redis: %s", exc)
                except Exception:  # a bug: log it, keep the loop alive, try again next tick
                    log.exception("leader tick failed")
            await asyncio.sleep(self.config.tick_interval_s)

    # --- mutations ----------------------------------------------------------------

    async def _record(self, node_id: str) -> tuple[Snapshot, MemberRecord]:
        snap = await self.store.snapshot()
        record = snap.records.get(node_id)
        if record is None:
            raise UnknownNode(node_id)
        return snap, record

    async def drain(self, node_id: str, window_s: float, timeout_s: float) -> dict:
        async with self._leading():
            snap, record = await self._record(node_id)
            record.desired = DRAINING
            await self.store.write_records([record])
            snap.records[node_id] = record
            ring = await self._tick_locked(snap)
            command = await self.store.command(node_id) or Command()
            await self.store.set_command(node_id, dataclasses.replace(
                command, state=DRAINING, version=command.version + 1, drain_window_s=window_s,
                drain_timeout_s=timeout_s, ring_epoch=ring.epoch,
            ))
            await self.store.add_event("drain", node_id, {"windowS": window_s, "timeoutS": timeout_s, "epoch": ring.epoch})
            return {"node": node_id, "desired": DRAINING, "ringEpoch": ring.epoch, "windowS": window_s, "timeoutS": timeout_s}

    async def undrain(self, node_id: str) -> dict:
        async with self._leading():
            snap, record = await self._record(node_id)
            record.desired = ACTIVE
            await self.store.write_records([record])
            command = await self.store.command(node_id) or Command()
            await self.store.set_command(node_id, dataclasses.replace(command, state=ACTIVE, version=command.version + 1))
            await self.store.add_event("undrain", node_id, {})
            snap.records[node_id] = record
            # It rejoins the ring once its heartbeat reports it accepting again (next tick after that).
            ring = await self._tick_locked(snap)
            return {"node": node_id, "desired": ACTIVE, "ringEpoch": ring.epoch}

    async def rebalance(self) -> dict:
        async with self._leading():
            ring = await self._tick_locked()
            snap = await self.store.snapshot()
            return await self._rebalance_locked(ring, snap.records, reason="operator")

    async def _rebalance_locked(self, ring: Ring, records: dict[str, MemberRecord], reason: str) -> dict:
        generation = await self.store.next_rebalance_generation()
        nodes = sorted(node_id for node_id, record in records.items() if record.health == ALIVE)
        for node_id in nodes:
            command = await self.store.command(node_id) or Command(version=0, state=records[node_id].desired)
            await self.store.set_command(node_id, dataclasses.replace(
                command, rebalance=generation, ring_epoch=ring.epoch, rebalance_window_s=self.config.drain_window_s,
            ))
        self.metrics.rebalances.inc()
        await self.store.add_event("rebalance", None, {"generation": generation, "epoch": ring.epoch,
                                                       "reason": reason, "nodes": nodes})
        return {"generation": generation, "ringEpoch": ring.epoch, "nodes": nodes, "reason": reason}

    async def forget(self, node_id: str) -> dict:
        async with self._leading():
            snap, record = await self._record(node_id)
            seen = snap.seen_ms.get(node_id)
            if seen is not None and snap.now_ms - seen <= self.config.dead_after_s * 1000:
                raise NodeStillAlive(node_id)
            await self.store.forget_node(node_id)
            await self.store.add_event("removed", node_id, {})
            ring = await self._tick_locked()
            return {"node": node_id, "removed": True, "ringEpoch": ring.epoch}
