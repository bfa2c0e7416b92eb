"""The control plane's state in Redis: reads and writes, nothing decided here.

Owns every Redis call the control plane makes apart from the lease: one
snapshot read per tick (heartbeats, seen times, membership records, ring,
Redis' clock), writing membership records and per-worker commands, the
bounded event log, the rebalance generation, and publishing the ring with a
write fenced by the leader lease (a deposed leader cannot overwrite its
successor's ring). Heartbeats and commands cross it as `common.records`,
never as loose dicts. Because all of it lives in Redis, any replica can serve
reads and a restarted replica loses nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from control.detector import MemberRecord
from common.keys import Keys
from common.records import Command, Heartbeat, MalformedRecord
from router.ring import Ring

log = logging.getLogger("ringcast.control.store")

# Publish the ring only while the caller's lease value is the one in Redis.
_FENCED_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


class NotLeader(RuntimeError):
    """The lease was lost between the decision and the write."""


@dataclass
class Snapshot:
    now_ms: int  # Redis server time: every age is measured on this one clock
    records: dict[str, MemberRecord]
    heartbeats: dict[str, Heartbeat]  # a heartbeat that cannot be read is left out (and logged)
    seen_ms: dict[str, int]
    ring: Ring


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _heartbeats(raw: dict) -> dict[str, Heartbeat]:
    """The readable heartbeats. One worker writing something else must not stop the control plane:
    its heartbeat is left out, so it is judged on its seen time alone and stays out of the ring."""
    out = {}
    for key, value in raw.items():
        node_id = _text(key)
        try:
            out[node_id] = Heartbeat.from_json(value)
        except MalformedRecord as exc:
            log.warning("ignoring the heartbeat of %s: %s", node_id, exc)
    return out


class ControlStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys, max_events: int) -> None:
        self.redis = redis
        self.keys = keys
        self.max_events = max_events
        self._fenced_set = redis.register_script(_FENCED_SET)

    async def snapshot(self) -> Snapshot:
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.keys.members)
        pipe.hgetall(self.keys.heartbeats)
        pipe.hgetall(self.keys.seen)
        pipe.get(self.keys.ring)
        now, records, heartbeats, seen, ring = await pipe.execute()
        return Snapshot(
            now_ms=int(now[0]) * 1000 + int(now[1]) // 1000,
            records={_text(k): MemberRecord.from_dict(json.loads(v)) for k, v in records.items()},
            heartbeats=_heartbeats(heartbeats),
            seen_ms={_text(k): int(v) for k, v in seen.items()},
            ring=Ring.from_json(ring) if ring else Ring(),
        )

    async def ring(self) -> Ring:
        raw = await self.redis.get(self.keys.ring)
        return Ring.from_json(raw) if raw else Ring()

    async def publish_ring(self, ring: Ring, lease_value: str) -> None:
        if not await self._fenced_set(keys=[self.keys.leader, self.keys.ring], args=[lease_value, ring.to_json()]):
            raise NotLeader("lease lost before the ring could be published")

    async def write_records(self, records: list[MemberRecord]) -> None:
        if records:
            mapping = {r.id: json.dumps(r.to_dict(), separators=(",", ":")) for r in records}
            await self.redis.hset(self.keys.members, mapping=mapping)

    async def forget_node(self, node_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.members, node_id)
        pipe.hdel(self.keys.heartbeats, node_id)
        pipe.hdel(self.keys.seen, node_id)
        pipe.delete(self.keys.command(node_id), self.keys.rooms(node_id))
        await pipe.execute()

    async def command(self, node_id: str) -> Command | None:
        """The worker's current command, None if it has none; MalformedRecord if it cannot be read."""
        raw = await self.redis.get(self.keys.command(node_id))
        return Command.from_json(raw) if raw else None

    async def set_command(self, node_id: str, command: Command) -> None:
        await self.redis.set(self.keys.command(node_id), command.to_json())

    async def next_rebalance_generation(self) -> int:
        return int(await self.redis.incr(self.keys.rebalance_generation))

    async def rebalance_generation(self) -> int:
        return int(await self.redis.get(self.keys.rebalance_generation) or 0)

    async def add_event(self, kind: str, node: str | None, detail: dict) -> dict:
        seq = int(await self.redis.incr(self.keys.event_seq))
        now_ms = int(time.time() * 1000)
        event = {
            "seq": seq, "tsMs": now_ms,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000)) + f".{now_ms % 1000:03d}Z",
            "kind": kind, "node": node, "detail": detail,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.keys.events, json.dumps(event, separators=(",", ":")))
        pipe.ltrim(self.keys.events, 0, self.max_events - 1)
        await pipe.execute()
        return event

    async def events(self, limit: int, since_seq: int = 0) -> list[dict]:
        """Newest first, at most `limit`, only those after `since_seq`."""
        raw = await self.redis.lrange(self.keys.events, 0, limit - 1)
        events = [json.loads(item) for item in raw]
        return [e for e in events if e["seq"] > since_seq]

    async def room_hosts(self, room: str, node_ids: list[str]) -> dict[str, int]:
        """Local member counts of `room` on each worker that reported hosting it."""
        if not node_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.hget(self.keys.rooms(node_id), room)
        counts = await pipe.execute()
        return {node_id: int(count) for node_id, count in zip(node_ids, counts) if count is not None}

    async def leader(self) -> dict | None:
        raw = await self.redis.get(self.keys.leader)
        return json.loads(raw) if raw else None
