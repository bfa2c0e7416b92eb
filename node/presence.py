"""Presence: who is in a room right now, across workers, for the rooms a rule opts in.

Owns the presence rules (`--presence-rule PREFIX*`, `--presence-events-rule
PREFIX*`), this worker's index of its local members of those rooms, the
presence store (Redis for a cluster, in-process for `--bus memory`) and the
two reads: `snapshot(room)` (who: `{"room","members","count","complete"}`) and
`stats(room)` (how many: `{"room","connections","users","complete"}`). The
session calls `joined`/`left` on every join, leave and disconnect; the
WebSocket `presence` requests and the API's `GET /v1/rooms/{room}/presence`
read through `snapshot`/`stats`. Join/leave events are `node.presence_events`'
job; this module feeds it.

The Redis store keeps, per room, a hash `<key_prefix>presence:{room}` (the
room in braces is a Redis Cluster hash tag, like the bus' room keys) of
connection id -> JSON `{"user","conn","info","worker","instance"}`. Each
worker process has a random instance id and a liveness key
`<key_prefix>presence:alive:<instance>` that expires `presence_ttl_s` after
its last refresh (refreshed every third of it). A reader keeps only entries
whose instance is alive and deletes a bounded number of the others, so a
SIGKILLed worker's members vanish from answers within `presence_ttl_s`, and a
restarted worker (a new instance id) never brings them back. A clean stop
deletes its own entries and its liveness key. Writes are keyed by
(room, connection), last write wins, and flushed in one pipeline per batch:
a reconnect storm costs a few round trips, not one per join. A write that
fails is kept and retried; a liveness key found missing (Redis restarted, or
this worker was cut off past the TTL) makes the worker write all its local
entries again.

It must not answer clients (the session does), decide scopes (the token
does, via the session), or touch the room's message stream: presence has its
own keys and never takes a sequence number.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import orjson
from redis.exceptions import RedisError

from common.redis_connect import RedisTarget
from node.bus import BusUnavailable
from node.config import NodeConfig
from node.connection import Connection
from node.outbox import Outbox
from node.presence_events import PresenceEvents
from node.redis_subscriber import RedisSubscriber
from router.backoff import BackoffPolicy

log = logging.getLogger("ringcast.presence")

GHOST_DELETES_PER_READ = 500  # entries of dead workers one read deletes at most (the rest: by later reads, or the hash TTL)
SCAN_BATCH = 1000  # HSCAN COUNT hint of one read step
WRITE_RETRY_S = 0.5  # a failed write batch is retried after this long (merged under newer writes)


class PresenceDisabled(Exception):
    """No presence rule covers the room: nobody tracks who is in it (PRESENCE_DISABLED)."""

    def __init__(self, room: str) -> None:
        super().__init__(f"presence is not enabled for {room} (see --presence-rule)")
        self.room = room


class PresenceRules:
    """Which rooms a rule opts in: each rule is `PREFIX*` (`*` alone: every room)."""

    def __init__(self, rules: Iterable[str]) -> None:
        self.prefixes = tuple(parse_rule(rule) for rule in rules)

    def __bool__(self) -> bool:
        return bool(self.prefixes)

    def covers(self, room: str) -> bool:
        return any(room.startswith(prefix) for prefix in self.prefixes)


def parse_rule(rule: str) -> str:
    """The prefix of a `PREFIX*` rule; ValueError otherwise."""
    if not rule.endswith("*") or "*" in rule[:-1] or "=" in rule:
        raise ValueError(f"presence rule {rule!r} is not PREFIX* (e.g. chat:*)")
    return rule[:-1]


@dataclass(frozen=True, slots=True)
class PresenceKeys:
    key_prefix: str
    channel_prefix: str

    def room(self, room: str) -> str:
        """The hash of the room's members: connection id -> entry."""
        return f"{self.key_prefix}presence:{{{room}}}"

    def alive(self, instance: str) -> str:
        """The liveness key of one worker process (instance)."""
        return f"{self.key_prefix}presence:alive:{instance}"

    def channel(self, room: str) -> str:
        """The pub/sub channel of the room's presence diffs (a room name has no braces: no room channel is this)."""
        return f"{self.channel_prefix}presence:{{{room}}}"


def public(entry: dict) -> dict:
    """A member as clients see it (the store's entry without its instance)."""
    return {"user": entry.get("user"), "conn": entry.get("conn"), "info": entry.get("info"), "worker": entry.get("worker")}


# --- stores -------------------------------------------------------------------------------------

class MemoryPresenceStore:
    """One process (`--bus memory`): the members are the worker's own."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, dict]] = {}

    def put(self, room: str, conn_id: str, entry: dict) -> None:
        self.rooms.setdefault(room, {})[conn_id] = entry

    def remove(self, room: str, conn_id: str) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.pop(conn_id, None)
            if not members:
                del self.rooms[room]

    def publish(self, channel: str, payload: bytes) -> None:
        pass  # nobody else to tell

    async def read(self, room: str, limit: int) -> tuple[list[dict], bool]:
        members = list(self.rooms.get(room, {}).values())
        return members[:limit], len(members) <= limit

    def start(self, local_entries: Callable[[], dict[str, dict[str, dict]]]) -> None:
        pass

    async def close(self, local_entries: dict[str, dict[str, dict]]) -> None:
        self.rooms.clear()


class RedisPresenceStore:
    """The cluster's store: one hash per room, one liveness key per worker process."""

    def __init__(
        self, target: RedisTarget, keys: PresenceKeys, instance: str, ttl_s: float, room_ttl_s: float,
        timeout_s: float, max_connections: int,
    ) -> None:
        self.keys = keys
        self.instance = instance
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.room_ttl_ms = max(self.ttl_ms, int(room_ttl_s * 1000))
        self.refresh_s = ttl_s / 3
        # The bus's Redis (TLS, Sentinel and password as common.redis_connect reads them), a pool of its own.
        self.redis = target.client(timeout_s=timeout_s, max_connections=max_connections, blocking=True, retry=False)
        self._pending: dict[tuple[str, str], bytes | None] = {}  # (room, conn) -> entry JSON, None: delete
        self._expire: set[str] = set()  # rooms whose hash TTL is due a refresh
        self._publishes: list[tuple[str, bytes]] = []
        self._expired_at: dict[str, float] = {}  # room -> monotonic time of its last PEXPIRE from here
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._local_entries: Callable[[], dict[str, dict[str, dict]]] | None = None

    # --- writes (batched) ---------------------------------------------------------------

    def put(self, room: str, conn_id: str, entry: dict) -> None:
        self._pending[(room, conn_id)] = orjson.dumps(entry)
        self._wake.set()

    def remove(self, room: str, conn_id: str) -> None:
        self._pending[(room, conn_id)] = None
        self._wake.set()

    def publish(self, channel: str, payload: bytes) -> None:
        self._publishes.append((channel, payload))
        self._wake.set()

    def start(self, local_entries: Callable[[], dict[str, dict[str, dict]]]) -> None:
        """local_entries(): {room: {conn id: entry}} of this worker, for a rewrite after Redis lost them."""
        self._local_entries = local_entries
        self._tasks = [asyncio.create_task(self._write_forever(), name="presence-writes"),
                       asyncio.create_task(self._refresh_forever(), name="presence-liveness")]

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            expire, self._expire = self._expire, set()
            publishes, self._publishes = self._publishes, []
            try:
                await self._write(pending, expire, publishes)
            except (RedisError, OSError) as exc:
                log.warning("presence: %d writes failed (%s); retrying", len(pending), exc)
                pending.update(self._pending)  # newer writes of the same member win
                self._pending = pending
                self._expire |= expire  # diffs (publishes) are not retried: they are live news, stale later
                await asyncio.sleep(WRITE_RETRY_S)
                self._wake.set()

    async def _write(self, pending: dict, expire: set[str], publishes: list[tuple[str, bytes]]) -> None:
        if not pending and not expire and not publishes:
            return
        pipe = self.redis.pipeline(transaction=False)
        touched = set(expire)
        for (room, conn_id), value in pending.items():
            key = self.keys.room(room)
            if value is None:
                pipe.hdel(key, conn_id)
            else:
                pipe.hset(key, conn_id, value)
                touched.add(room)
        now = time.monotonic()
        for room in touched:
            pipe.pexpire(self.keys.room(room), self.room_ttl_ms)
            self._expired_at[room] = now
        for channel, payload in publishes:
            pipe.publish(channel, payload)
        await pipe.execute()

    async def _refresh_forever(self) -> None:
        """Keep this process' liveness key alive; rewrite everything if Redis had lost it."""
        first = True
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.exists(self.keys.alive(self.instance))
                pipe.set(self.keys.alive(self.instance), b"1", px=self.ttl_ms)
                existed, _ = await pipe.execute()
                local = self._local_entries() if self._local_entries is not None else {}
                if not existed and not first and local:
                    log.warning("presence: liveness key was gone (Redis restarted or unreachable past presence_ttl_s);"
                                " writing this worker's %d rooms again", len(local))
                    for room, members in local.items():
                        for conn_id, entry in members.items():
                            self._pending.setdefault((room, conn_id), orjson.dumps(entry))
                first = False
                now = time.monotonic()
                for room in local:
                    if now - self._expired_at.get(room, 0.0) > self.room_ttl_ms / 3000:
                        self._expire.add(room)
                for room in [room for room in self._expired_at if room not in local]:
                    del self._expired_at[room]
                if self._pending or self._expire:
                    self._wake.set()
            except (RedisError, OSError) as exc:
                log.warning("presence: liveness refresh failed: %s", exc)
            await asyncio.sleep(self.refresh_s)

    # --- reads --------------------------------------------------------------------------

    async def read(self, room: str, limit: int) -> tuple[list[dict], bool]:
        """Up to `limit` entries of live workers, and whether that is all of them. Raises BusUnavailable."""
        key = self.keys.room(room)
        try:
            raw: dict[bytes, bytes] = {}
            cursor = 0
            while True:
                cursor, chunk = await self.redis.hscan(key, cursor, count=min(limit, SCAN_BATCH))
                raw.update(chunk)
                if cursor == 0 or len(raw) >= limit:
                    break
            entries: list[dict] = []
            broken: list[bytes] = []
            for field_name, value in raw.items():
                try:
                    entry = orjson.loads(value)
                except orjson.JSONDecodeError:
                    broken.append(field_name)
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("instance"), str):
                    entries.append(entry)
                else:
                    broken.append(field_name)
            others = sorted({e["instance"] for e in entries} - {self.instance})
            alive = {self.instance}
            if others:
                pipe = self.redis.pipeline(transaction=False)
                for instance in others:
                    pipe.exists(self.keys.alive(instance))
                alive |= {instance for instance, found in zip(others, await pipe.execute()) if found}
            live = [e for e in entries if e["instance"] in alive]
            ghosts = broken + [e["conn"].encode() for e in entries if e["instance"] not in alive and isinstance(e.get("conn"), str)]
            if ghosts:
                await self.redis.hdel(key, *ghosts[:GHOST_DELETES_PER_READ])
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"presence store unavailable: {exc}") from None
        complete = cursor == 0
        return live[:limit], complete and len(live) <= limit

    async def close(self, local_entries: dict[str, dict[str, dict]]) -> None:
        """A clean stop: flush, delete this worker's entries and its liveness key."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            for room, members in local_entries.items():
                for conn_id in members:
                    self._pending[(room, conn_id)] = None
            await self._write(self._pending, set(), [])
            await self.redis.delete(self.keys.alive(self.instance))
        except (RedisError, OSError) as exc:
            log.warning("presence: could not remove this worker's entries (they expire in presence_ttl_s): %s", exc)
        await self.redis.aclose()


# --- the worker's presence -----------------------------------------------------------------------

class Presence:
    """One worker's presence: its local members of the opted-in rooms, the store, the events."""

    def __init__(self, config: NodeConfig, worker_id: str, outbox: Outbox) -> None:
        self.config = config
        self.worker_id = worker_id
        self.rules = PresenceRules(config.presence_rule)
        self.event_rules = PresenceRules(config.presence_events_rule)
        self.instance = secrets.token_hex(8)
        self.keys = PresenceKeys(config.key_prefix, config.channel_prefix)
        self.local: dict[str, dict[str, tuple[Connection, dict]]] = {}  # room -> conn id -> (conn, entry)
        self.store: MemoryPresenceStore | RedisPresenceStore | None = None
        self.events: PresenceEvents | None = None
        self.subscriber: RedisSubscriber | None = None
        self._locator = None  # where the subscriber connects (asks the sentinels with redis+sentinel://)
        clustered = config.bus != "memory"
        target = RedisTarget.from_settings(config) if clustered and (self.rules or self.event_rules) else None
        if self.rules or (self.event_rules and clustered):  # events across workers publish through the store
            self.store = (
                RedisPresenceStore(target, self.keys, self.instance, config.presence_ttl_s,
                                   config.presence_room_ttl_s, config.bus_timeout_s, config.bus_max_connections)
                if clustered else MemoryPresenceStore()
            )
        if self.event_rules:
            publish = None
            if clustered:
                publish = self._publish_diff
                self._locator = target.locator(config.bus_timeout_s)
                self.subscriber = RedisSubscriber(
                    self._locator, timeout_s=config.bus_timeout_s,
                    backoff=BackoffPolicy(base_s=config.bus_reconnect_base_s, factor=2.0,
                                          cap_s=config.bus_reconnect_cap_s, jitter=0.5),
                    on_message=lambda channel, payload: self.events.on_remote(payload),
                )
            self.events = PresenceEvents(
                self.instance, outbox, config.presence_events_interval_ms / 1000, config.presence_events_max_entries,
                self.members_of, publish,
            )

    def start(self) -> None:
        if self.store is not None:
            self.store.start(self.local_entries)
        if self.subscriber is not None:
            self.subscriber.start()
        if self.events is not None:
            self.events.start()

    async def close(self) -> None:
        if self.events is not None:
            await self.events.close()
        if self.subscriber is not None:
            await self.subscriber.close()
        if self._locator is not None:
            await self._locator.close()
        if self.store is not None:
            await self.store.close(self.local_entries())

    # --- the session's hooks ----------------------------------------------------------------

    def tracks(self, room: str) -> bool:
        return self.rules.covers(room) or self.event_rules.covers(room)

    def joined(self, conn: Connection, room: str) -> None:
        """`conn` is now a live member of `room` (called after `joined` was sent)."""
        if not self.tracks(room):
            return
        user = conn.identity.user if conn.identity is not None else conn.id
        info = getattr(conn.identity, "info", None) if conn.identity is not None else None
        entry = {"user": user, "conn": conn.id, "info": info, "worker": self.worker_id, "instance": self.instance}
        members = self.local.setdefault(room, {})
        first = not members
        members[conn.id] = (conn, entry)
        if self.store is not None and self.rules.covers(room):
            self.store.put(room, conn.id, entry)
        if self.events is not None and self.event_rules.covers(room):
            if first and self.subscriber is not None:
                self.subscriber.subscribe(self.keys.channel(room).encode())
            self.events.coalescer.joined(room, public(entry))

    def left(self, conn: Connection, room: str) -> None:
        """`conn` left `room` (a leave, or its socket went away). Unknown members are ignored."""
        members = self.local.get(room)
        if members is None or conn.id not in members:
            return
        _, entry = members.pop(conn.id)
        if not members:
            del self.local[room]
        if self.store is not None and self.rules.covers(room):
            self.store.remove(room, conn.id)
        if self.events is not None and self.event_rules.covers(room):
            self.events.coalescer.left(room, public(entry))
            if not members and self.subscriber is not None:
                self.subscriber.unsubscribe(self.keys.channel(room).encode())

    def _publish_diff(self, room: str, payload: bytes) -> None:
        assert self.store is not None
        self.store.publish(self.keys.channel(room), payload)

    def members_of(self, room: str) -> list[Connection]:
        return [conn for conn, _ in self.local.get(room, {}).values()]

    def local_entries(self) -> dict[str, dict[str, dict]]:
        return {room: {conn_id: entry for conn_id, (_, entry) in members.items()}
                for room, members in self.local.items() if self.rules.covers(room)}

    # --- reads ------------------------------------------------------------------------------

    async def snapshot(self, room: str) -> dict:
        """`{"room","members":[{"user","conn","info","worker"}],"count","complete"}`, at most presence_max_members.

        Raises PresenceDisabled (no rule covers the room) or BusUnavailable (Redis)."""
        entries, complete = await self._read(room, self.config.presence_max_members)
        members = sorted((public(e) for e in entries), key=lambda m: (str(m["user"]), str(m["conn"])))
        return {"room": room, "members": members, "count": len(members), "complete": complete}

    async def stats(self, room: str) -> dict:
        """`{"room","connections","users","complete"}`, counted over at most presence_max_stats_entries entries."""
        entries, complete = await self._read(room, self.config.presence_max_stats_entries)
        users = {str(e.get("user")) for e in entries}
        return {"room": room, "connections": len(entries), "users": len(users), "complete": complete}

    async def _read(self, room: str, limit: int) -> tuple[list[dict], bool]:
        if not self.rules.covers(room) or self.store is None:
            raise PresenceDisabled(room)
        return await self.store.read(room, limit)
