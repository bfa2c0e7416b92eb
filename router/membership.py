"""Where the ring comes from: a static list, or the control plane's ring in Redis.

Owns the `RingSource` seam through which routers and workers learn the
current ring, and its two sources:

- `StaticRingSource`: a fixed list of members (`--nodes`), epoch 0.
- `RedisRingSource`: polls the Redis key `{key_prefix}ring` (on a Redis
  Cluster `{key_prefix}{ctl}ring`, see `common.keys`), where the control
  plane publishes `Ring.to_json()`, every `poll_interval_s`. It keeps the last
  good ring while Redis is unreachable or the value is garbage (the data plane
  keeps serving on the last ring), and falls back to a static ring while the
  key is missing or empty ("no control plane yet").

It also owns the `--nodes` syntax (`parse_nodes`). Polling a plain key is the
design: no pub/sub channel carries the ring, because a worker must never
subscribe to a channel that is not a room's.

It must not hash rooms (that is `router.ring`) nor serve HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable
from urllib.parse import urlsplit

from common.keys import Keys
from common.redis_connect import RedisTarget, parse_url
from common.tasks import stop_tasks
from router.ring import Member, Ring

log = logging.getLogger("ringcast.membership")

NODES_SYNTAX = "[ID=]HOST:PORT[@WEIGHT] or [ID=]ws://HOST:PORT/PATH[@WEIGHT]"

RingListener = Callable[[Ring, Ring], None]  # (old, new)


def ring_key(key_prefix: str, cluster: bool = False) -> str:
    """The Redis key the control plane publishes the ring under (`common.keys.Keys.ring`)."""
    return Keys(key_prefix, cluster=cluster).ring


def parse_node(spec: str) -> Member:
    """One `--nodes` entry as a Member.

    `127.0.0.1:8700`                    -> id 127.0.0.1:8700, url ws://127.0.0.1:8700/ws, weight 1
    `127.0.0.1:8700@2`                  -> the same with weight 2
    `a=ws://10.0.0.5:8700/ws@3`         -> id a, that url, weight 3
    `wss://edge.example.com/ws`         -> id edge.example.com:443
    The id defaults to host:port, which is also a worker's default shard id.
    """
    text = spec.strip()
    if not text:
        raise ValueError("empty node entry")
    weight = 1
    head, at, tail = text.rpartition("@")
    if at and tail.isdigit():
        text, weight = head, int(tail)
        if weight < 1:
            raise ValueError(f"node {spec!r}: weight must be >= 1")
    member_id = ""
    if "=" in text.split("://", 1)[0]:
        member_id, text = text.split("=", 1)
        member_id = member_id.strip()
        if not member_id:
            raise ValueError(f"node {spec!r}: empty id before '='")
    if "://" not in text:
        text = f"ws://{text}/ws"
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"node {spec!r}: expected {NODES_SYNTAX}")
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        raise ValueError(f"node {spec!r}: bad port") from None
    address = f"{parts.hostname}:{port}"  # a static member is reached where its URL points
    return Member(member_id or address, text, weight, address)


def parse_nodes(specs: Iterable[str]) -> list[Member]:
    """Every entry of a `--nodes` list (repeatable flag and/or comma-separated)."""
    members = []
    for spec in specs:
        for entry in spec.split(","):
            if entry.strip():
                members.append(parse_node(entry))
    return members


def static_ring(specs: Iterable[str]) -> Ring | None:
    """The ring of a `--nodes` list, or None when the list is empty."""
    members = parse_nodes(specs)
    return Ring(members, 0) if members else None


class RingSource:
    """The current ring, and a callback on every change. Start before use; close after."""

    def __init__(self) -> None:
        self._ring = Ring()
        self._listeners: list[RingListener] = []

    @property
    def ring(self) -> Ring:
        """The current ring; empty (no member, epoch 0) when nothing is known yet."""
        return self._ring

    def on_change(self, listener: RingListener) -> None:
        self._listeners.append(listener)

    def _set(self, ring: Ring) -> None:
        old = self._ring
        if ring.epoch == old.epoch and ring.same_members(old):
            return
        self._ring = ring
        log.info("ring epoch %d -> %d: %d members", old.epoch, ring.epoch, len(ring))
        for listener in self._listeners:
            try:
                listener(old, ring)
            except Exception:  # a listener's bug must not stop the ring from updating
                log.exception("ring change listener failed")

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class StaticRingSource(RingSource):
    def __init__(self, ring: Ring) -> None:
        super().__init__()
        self._ring = ring


class RedisRingSource(RingSource):
    """Follows `{key_prefix}ring` in Redis by polling it."""

    def __init__(
        self,
        redis: RedisTarget | str,  # a bare URL string carries no TLS files nor password file
        key_prefix: str,
        poll_interval_s: float,
        timeout_s: float,
        fallback: Ring | None = None,
    ) -> None:
        super().__init__()
        self.redis = parse_url(redis) if isinstance(redis, str) else redis
        self.key = ring_key(key_prefix, self.redis.cluster)
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.fallback = fallback
        self.redis_reachable = False
        self._last_raw: bytes | None = None
        self._client = None
        self._task: asyncio.Task | None = None
        if fallback is not None:
            self._ring = fallback

    async def start(self) -> None:
        self._client = self.redis.client(timeout_s=self.timeout_s)
        await self.poll_once()  # a router or worker starts with the published ring if Redis is up
        self._task = asyncio.create_task(self._poll_forever(), name="ring-poll")

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])  # re-cancels: redis-py can swallow a cancellation inside a command
        if self._client is not None:
            await self._client.aclose()

    async def poll_once(self) -> None:
        """Read the key once and apply what it says; never raises."""
        assert self._client is not None
        try:
            raw = await self._client.get(self.key)
        except Exception as exc:  # any Redis trouble: keep serving on the last ring
            if self.redis_reachable:
                log.warning("cannot read %s (%s); keeping ring epoch %d", self.key, exc, self._ring.epoch)
            self.redis_reachable = False
            return
        self.redis_reachable = True
        if not raw:
            self._last_raw = None
            if self.fallback is not None:
                self._set(self.fallback)
            # No control plane and no static list: whatever we had stays (nothing, at first).
            return
        if raw == self._last_raw:
            return
        try:
            ring = Ring.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable ring in %s (%s); keeping epoch %d", self.key, exc, self._ring.epoch)
            return
        self._last_raw = raw
        self._set(ring)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self.poll_once()


def make_ring_source(
    redis: RedisTarget | str, nodes: Iterable[str], key_prefix: str, poll_interval_s: float, timeout_s: float,
    *, default: Ring | None = None,
) -> RingSource | None:
    """The source a service's settings ask for: Redis (with the static list as
    fallback), the static list alone, or None when neither is given.

    `default` stands in for an empty static list (a lone node's ring of its own
    workers): it is then the fallback, and the source when there is no Redis."""
    fallback = static_ring(nodes) or default
    if redis:
        return RedisRingSource(redis, key_prefix, poll_interval_s, timeout_s, fallback)
    if fallback is not None:
        return StaticRingSource(fallback)
    return None
