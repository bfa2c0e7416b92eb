"""The leader lease: at most one control replica decides at a time.

Owns the Redis key `control:leader`: taken with SET NX PX by a follower when
it is free, renewed by its holder with a compare-and-set script (PEXPIRE only
if the value is still ours), released on a clean exit. The holder considers
itself leader only until the end of its last successful renewal's lease, so a
leader cut off from Redis stops acting before a follower can take over. Its
value (id, URL, nonce) is also the fencing token every control-plane write
checks in Redis (`control.store`); a holder whose write was refused steps
down at once (`step_down`). It decides nothing else.
"""

from __future__ import annotations

import json
import logging
import secrets
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("ringcast.control.lease")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaderLease:
    def __init__(self, redis: aioredis.Redis, key: str, replica_id: str, replica_url: str, lease_s: float) -> None:
        self.redis = redis
        self.key = key
        self.replica_id = replica_id
        self.replica_url = replica_url
        # The lease value is also the fencing token of every write. A fresh nonce for every take makes each
        # term of leadership a different token: a write decided in an earlier term is refused even if this
        # replica leads again by the time it reaches Redis (and a restarted replica is a different holder).
        self.value = self._new_value()
        self.lease_ms = int(lease_s * 1000)
        self._valid_until = 0.0  # monotonic end of the lease we last took or renewed
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def _new_value(self) -> str:
        return json.dumps({"id": self.replica_id, "url": self.replica_url, "nonce": secrets.token_hex(8)},
                          sort_keys=True)

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._valid_until

    def step_down(self) -> None:
        """Stop leading now: a fenced write found another replica's value in the lease key."""
        if self._valid_until:
            log.warning("replica %s steps down: another replica holds the leader lease", self.replica_id)
        self._valid_until = 0.0

    async def refresh(self) -> bool:
        """Renew if we hold the lease, else try to take it. Returns whether we lead now."""
        started = time.monotonic()
        try:
            if self.is_leader:
                held = bool(await self._renew(keys=[self.key], args=[self.value, self.lease_ms]))
                if not held:
                    log.warning("replica %s lost the leader lease", self.replica_id)
            else:
                self.value = self._new_value()  # a new term, a new fencing token
                held = bool(await self.redis.set(self.key, self.value, nx=True, px=self.lease_ms))
                if held:
                    log.info("replica %s took the leader lease", self.replica_id)
        except (RedisError, OSError) as exc:
            log.warning("lease refresh failed: %s", exc)
            return self.is_leader  # keep acting until our lease would have run out, not longer
        # Count the lease from before the call: Redis started its clock no earlier than that.
        self._valid_until = started + self.lease_ms / 1000 if held else 0.0
        return held

    async def release(self) -> None:
        self._valid_until = 0.0
        try:
            await self._release(keys=[self.key], args=[self.value])
        except (RedisError, OSError):
            pass

    async def holder(self) -> dict | None:
        """Who leads now, as {"id","url"} (None when nobody holds the lease)."""
        raw = await self.redis.get(self.key)
        if not raw:
            return None
        data = json.loads(raw)
        return {"id": data.get("id"), "url": data.get("url")}
