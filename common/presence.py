"""Presence: which processes are running right now, for discovery only.

Owns the presence hashes named in `common.keys` (`control:replicas`,
`routers`): each running process rewrites its own entry
`{"id","url","expiresAtMs"}` every few seconds (`announce`), removes it on a
clean exit (`withdraw`), and a reader keeps only the unexpired entries
(`present`). Expiry is measured on Redis' clock, so hosts with skewed clocks
agree. A writer also drops expired entries and gives the whole hash a TTL, so
processes that died without withdrawing vanish and an abandoned hash goes away.

Presence is not a decision: it is not fenced by the leader lease and nothing
acts on it but discovery (GET /v1/sd/prometheus). It must not be used to
judge a worker's health (heartbeats and `nodes:member` do that).
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from common.redis_connect import TIME_AT_KEY_SCRIPT

# KEYS[1] the hash; ARGV[1] the entry's id, ARGV[2] its JSON after "expiresAtMs", ARGV[3] its TTL (ms).
_ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if not ok or type(entry) ~= 'table' or tonumber(entry['expiresAtMs']) == nil
     or tonumber(entry['expiresAtMs']) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], '{"expiresAtMs":' .. string.format('%d', now + ttl) .. ',' .. ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""


class Presence:
    """One process' entry in one presence hash."""

    def __init__(self, redis: aioredis.Redis, key: str, entry_id: str, url: str, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.entry_id = entry_id
        self.url = url
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._announce = redis.register_script(_ANNOUNCE)

    async def announce(self) -> None:
        """Write (or refresh) this process' entry; it expires `ttl_s` later unless refreshed."""
        after_expiry = json.dumps({"id": self.entry_id, "url": self.url}, separators=(",", ":"))[1:]
        await self._announce(keys=[self.key], args=[self.entry_id, after_expiry, self.ttl_ms])

    async def withdraw(self) -> None:
        """Remove this process' entry at once (a clean exit)."""
        await self.redis.hdel(self.key, self.entry_id)


async def present(redis: aioredis.Redis, key: str) -> list[dict]:
    """The unexpired entries `{"id","url","expiresAtMs"}` of a presence hash, sorted by id."""
    pipe = redis.pipeline(transaction=False)
    pipe.eval(TIME_AT_KEY_SCRIPT, 1, key)  # the clock of the node `_ANNOUNCE` stamped the entries on
    pipe.hgetall(key)
    now, raw = await pipe.execute()
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    entries = []
    for value in raw.values():
        try:
            entry = json.loads(value)
            if int(entry["expiresAtMs"]) > now_ms and entry.get("id") and entry.get("url"):
                entries.append({"id": str(entry["id"]), "url": str(entry["url"]),
                                "expiresAtMs": int(entry["expiresAtMs"])})
        except (ValueError, TypeError, KeyError):
            continue  # not ours to repair: the next announce drops it
    return sorted(entries, key=lambda e: e["id"])
