"""The control plane's state in Redis: reads and writes, nothing decided here.

Owns every Redis call the control plane makes apart from the lease: one
snapshot read per tick (heartbeats, seen times, membership records, ring,
Redis' clock), and every write: membership records, per-worker commands,
the bounded event log, the rebalance generation, forgetting a node, and the
ring. Every write is fenced by the leader lease: it is a Lua script that
first checks that `control:leader` still holds this replica's lease value
and writes nothing (raising `NotLeader`) otherwise, so a deposed leader
resuming after a pause cannot revert what its successor wrote. Reads are not
fenced: any replica serves them; neither are the presence entries replicas
and routers announce (`common.presence`), which only service discovery reads. Heartbeats and commands cross it as
`common.records`, never as loose dicts. Because all of it lives in Redis, any
replica can serve reads and a restarted replica loses nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from control.detector import MemberRecord
from common.keys import Keys
from common.presence import present
from common.redis_connect import TIME_AT_KEY_SCRIPT
from common.records import Command, Heartbeat, MalformedRecord
from router.ring import Ring

log = logging.getLogger("ringcast.control.store")

# Every write below is one script that starts with the fence: KEYS[1] is the lease key, ARGV[1] the
# writer's lease value. A script that finds another value writes nothing and returns nil (None).
_FENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
"""

_FENCED_SET = _FENCE + """
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

# HSET of ARGV[2..] (field, value pairs) in chunks: Lua's unpack() fails past a few thousand values.
_FENCED_HSET = _FENCE + """
for i = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
"""

_FENCED_INCR = _FENCE + """
return redis.call('INCR', KEYS[2])
"""

# KEYS[2] the sequence counter, KEYS[3] the event list; ARGV[2] the event JSON after its "seq" field,
# ARGV[3] the index of the last event kept.
_FENCED_EVENT = _FENCE + """
local seq = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], '{"seq":' .. seq .. ',' .. ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]))
return seq
"""

# KEYS[2..4] the members, heartbeats and seen hashes, KEYS[5..6] the node's command and rooms; ARGV[2] its id.
_FENCED_FORGET = _FENCE + """
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('DEL', KEYS[5], KEYS[6])
return 1
"""


class NotLeader(RuntimeError):
    """The lease was lost between the decision and the write: the write was refused, nothing was written."""


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
    """Reads and fenced writes. `fence` is the lease value of the term the writes belong to
    (`LeaderLease.value`): the controller sets it, under its lock, at the start of each tick or mutation."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, max_events: int, fence: str = "") -> None:
        self.redis = redis
        self.keys = keys
        self.max_events = max_events
        self.fence = fence
        self.refused_writes = 0  # fenced writes refused because another replica held the lease
        self._set = redis.register_script(_FENCED_SET)
        self._hset = redis.register_script(_FENCED_HSET)
        self._incr = redis.register_script(_FENCED_INCR)
        self._event = redis.register_script(_FENCED_EVENT)
        self._forget = redis.register_script(_FENCED_FORGET)

    async def _fenced(self, script, what: str, keys: list[str], args: list) -> int:
        """Run one fenced write; NotLeader (logged) if the lease in Redis is not ours."""
        result = await script(keys=[self.keys.leader, *keys], args=[self.fence, *args])
        if result is None:
            self.refused_writes += 1
            log.warning("refused to %s: the leader lease is no longer this replica's", what)
            raise NotLeader(f"lease lost: {what} was refused")
        return int(result)

    async def snapshot(self) -> Snapshot:
        pipe = self.redis.pipeline(transaction=False)
        if self.keys.cluster:
            pipe.eval(TIME_AT_KEY_SCRIPT, 1, self.keys.seen)  # the clock that stamped the seen times
        else:
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

    async def publish_ring(self, ring: Ring) -> None:
        await self._fenced(self._set, f"publish ring epoch {ring.epoch}", [self.keys.ring], [ring.to_json()])

    async def write_records(self, records: list[MemberRecord]) -> None:
        if records:
            pairs: list[str] = []
            for r in records:
                pairs += [r.id, json.dumps(r.to_dict(), separators=(",", ":"))]
            await self._fenced(self._hset, f"write the membership records of {sorted(r.id for r in records)}",
                               [self.keys.members], pairs)

    async def forget_node(self, node_id: str) -> None:
        await self._fenced(self._forget, f"forget node {node_id}",
                           [self.keys.members, self.keys.heartbeats, self.keys.seen,
                            self.keys.command(node_id), self.keys.rooms(node_id)], [node_id])

    async def command(self, node_id: str) -> Command | None:
        """The worker's current command, None if it has none; MalformedRecord if it cannot be read."""
        raw = await self.redis.get(self.keys.command(node_id))
        return Command.from_json(raw) if raw else None

    async def set_command(self, node_id: str, command: Command) -> None:
        await self._fenced(self._set, f"write the command of {node_id}", [self.keys.command(node_id)],
                           [command.to_json()])

    async def next_rebalance_generation(self) -> int:
        return await self._fenced(self._incr, "start a rebalance generation", [self.keys.rebalance_generation], [])

    async def rebalance_generation(self) -> int:
        return int(await self.redis.get(self.keys.rebalance_generation) or 0)

    async def add_event(self, kind: str, node: str | None, detail: dict) -> dict:
        now_ms = int(time.time() * 1000)
        event = {
            "tsMs": now_ms,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000)) + f".{now_ms % 1000:03d}Z",
            "kind": kind, "node": node, "detail": detail,
        }
        # The script numbers the event and writes {"seq":N,...} in front of the rest of the JSON.
        after_seq = json.dumps(event, separators=(",", ":"))[1:]
        seq = await self._fenced(self._event, f"log a {kind} event", [self.keys.event_seq, self.keys.events],
                                 [after_seq, self.max_events - 1])
        return {"seq": seq, **event}

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

    async def control_replicas(self) -> list[dict]:
        """Every control replica that announced itself recently: `{"id","url","expiresAtMs"}`."""
        return await present(self.redis, self.keys.control_replicas)

    async def routers(self) -> list[dict]:
        """Every router (started with --redis) that announced itself recently."""
        return await present(self.redis, self.keys.routers)
