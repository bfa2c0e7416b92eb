"""The Redis bus: one channel per room on a single Redis, for a cluster of workers.

That Redis is reached through common/redis_connect.py (TLS, password file,
or a master found through Sentinel, which both connections follow across a
failover); a promoted replica's other replication ID starts new epochs.

Owns what a worker does with Redis for room traffic, in three parts:

- Names: every channel and key the bus uses for a room (`BusKeys`). These are
  the data plane's names; the control plane's are in common/keys.py.
- Publish: one dedicated connection (a small asyncio protocol over hiredis'
  reply parser, like node/redis_subscriber.py's) carries every publish of
  the worker. Publishes queued in one event-loop turn are written at once,
  up to `max_publishes_per_script` per EVALSHA of the publish script (loaded
  with SCRIPT LOAD when the connection opens); Redis answers in order, so
  the replies are matched to the batches first in, first out. For each
  publish, in order, the script assigns the room's next sequence number,
  appends to the room's history stream and PUBLISHes, atomically, so the
  channel order is the sequence order, and publishes of one caller go out in
  the order it made them. History reads go through redis-py's asyncio
  client. The room's state remembers the Redis replication ID it was written
  under; a state from another one (Redis restarted from a snapshot or AOF, a
  replica promoted) is treated as lost: new epoch. The payload is
  node/bus_wire.py's format; the script is built from its Lua fragments. The
  connection is opened by `start()` (and again by the publish after a loss);
  it sends nothing but AUTH, SELECT, SCRIPT LOAD and EVALSHA. A publish that
  cannot finish within
  `timeout_s` of its call raises BusUnavailable (not written to Redis) or
  PublishUnconfirmed (written, no answer); it never hangs. One timer per bus
  enforces that: when the oldest written publish is unanswered at its
  deadline the connection is dropped (everything written and unanswered is
  unconfirmed) and the next publish opens a new one. A connection that
  refuses writes (READONLY after a failover, LOADING, NOSCRIPT after SCRIPT
  FLUSH: nothing of the script ran) fails those publishes with BusUnavailable
  and is replaced once its written publishes are answered; any other error of
  a script (it may have stopped after some of its publishes) fails its
  publishes with PublishUnconfirmed.
- Receive: one node/redis_subscriber.py connection carries every hosted
  room's channel and nothing else (subscription confirmations, liveness
  pings, reconnect with backoff, re-subscribe and the resync signal are its
  job). This module maps rooms to channels and parses what arrives into
  BusMessages for the `deliver` callback.
- Idempotency keys: a publish with a key also names the key's Redis string
  (`BusKeys.idempotency_key`, the room's hash tag, so the same slot); the
  publish script reads it first (a hit: return the stored position, publish
  nothing) and writes `seq epoch` to it with the window as TTL after the
  publish. Check and publish are one script: two concurrent retries with the
  same key cannot both publish.

Subclasses (node/bus_global.py) may override `channel()` and
`_room_message()`, and use `subscriber` and `_await_confirmation()`; a
subclass that publishes with another command (Redis Cluster's SPUBLISH) sets
`publish_command`, from which the publish script is built, and
`max_publishes_per_script` (1 keeps each script's keys in one slot); one
that sends publishes through another client runs `publish_script` with the
KEYS and ARGV `publish_keys_and_args` builds (documented above the script);
nothing else here is meant for them.

It must not know about WebSocket connections or members: that is the hub's.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable

import hiredis
from redis.exceptions import RedisError

from common.redis_connect import RedisTarget, parse_url
from node import bus_wire
from node.bus import (
    DEFAULT_IDEMPOTENCY_WINDOW_S,
    LATEST,
    Bus,
    BusMessage,
    BusUnavailable,
    HistoryPage,
    Position,
    PublishUnconfirmed,
    valid_idempotency_key,
)
from node.history import HistoryPolicy
from node.redis_subscriber import RedisSubscriber, encode_command
from router.backoff import BackoffPolicy

log = logging.getLogger("ringcast.bus")


# --- names --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusKeys:
    """Every Redis name the bus uses for a room.

    The room in braces is a Redis Cluster hash tag: a room's state hash and
    history stream always share a slot, so one script can touch both.
    """

    channel_prefix: str  # room channels: <channel_prefix><room> (default "ringcast:room:")
    key_prefix: str  # room keys: <key_prefix>room:{<room>}, <key_prefix>hist:{<room>}, <key_prefix>idem:{<room>}:<key>

    def channel(self, room: str) -> str:
        """The pub/sub channel of the room's live messages."""
        return self.channel_prefix + room

    def state_key(self, room: str) -> str:
        """The hash holding the room's `seq` and `epoch`."""
        return f"{self.key_prefix}room:{{{room}}}"

    def history_key(self, room: str) -> str:
        """The stream of the room's kept messages (node/bus_wire.py's history entries)."""
        return f"{self.key_prefix}hist:{{{room}}}"

    def idempotency_key(self, room: str, key: str) -> str:
        """The string holding `seq epoch` of the room's publish with idempotency key `key` (TTL: the window)."""
        return f"{self.key_prefix}idem:{{{room}}}:{key}"

    def room_of_channel(self, channel: bytes) -> str:
        """The room of a channel named by `channel()` (UnicodeDecodeError if not UTF-8)."""
        return channel.decode()[len(self.channel_prefix):]


# --- scripts ------------------------------------------------------------------------
# The payload and history entry formats are node/bus_wire.py's; the scripts splice in its Lua.

_entry_id = bus_wire.lua_history_entry_id
_BODY_FIELD = bus_wire.HISTORY_BODY_FIELD

# The Redis history a room's state was written under: the master's replication ID. It
# changes whenever this Redis may hold an older copy of its data than what was served
# before: a restart (loaded from an RDB snapshot or an AOF, or empty) and a replica
# promoted to master (its data may lag the old master's). A running master keeps it.
# Reading it costs one INFO replication per script (about 3-4 us of Redis CPU).
_LUA_REDIS_HISTORY = "(string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '')"
REDIS_HISTORY_FIELD = "src"  # the field of the room state hash holding it

# One script runs a batch of publishes, in order (so Redis reads its replication ID, the
# costliest call, once per batch rather than once per publish). ARGV[1]: how many publishes;
# then per publish PUBLISH_ARGS values: how many keys it has (2 or 3), channel, body, state
# TTL (s), history size, history TTL (s), idempotency window (s); its keys, in KEYS, in
# the same order: room state hash, room history stream, (optional) the idempotency key.
# Returns per publish 3 values: seq, epoch, 1 if its idempotency key was already used
# (nothing published) else 0. A key already used returns the first publish's position
# even if the room's epoch changed since: that is where the message was published.
# The epoch is born with the room's state: when Redis lost the hash, or the hash was
# written under another Redis history (restored from disk, failed over), the room's
# position cannot be trusted to continue what clients saw, so the next publish starts
# a new epoch at seq 1 (and drops any stale history) so clients can tell. Sequence,
# history and publish happen in one script, so no subscriber can see an order
# different from the history. With Redis Cluster every key of one script must be in
# one slot: a subclass there runs one publish per script (`max_publishes_per_script`).
PUBLISH_ARGS = 7


def publish_script(publish_command: str = "PUBLISH") -> str:
    """The publish script, PUBLISHing with `publish_command` (Redis Cluster: SPUBLISH, to the room's shard)."""
    return f"""
local src = {_LUA_REDIS_HISTORY}
local replies = {{}}
local k, a = 0, 1
for i = 1, tonumber(ARGV[1]) do
  local state_key, history_key, idempotency_key = KEYS[k + 1], KEYS[k + 2], nil
  if ARGV[a + 1] == '3' then idempotency_key = KEYS[k + 3] end
  local channel, body = ARGV[a + 2], ARGV[a + 3]
  local state_ttl, history_size, history_ttl, window = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  k = k + tonumber(ARGV[a + 1])
  a = a + {PUBLISH_ARGS}
  local first = idempotency_key and redis.call('GET', idempotency_key)
  if first then
    local space = string.find(first, ' ', 1, true)
    replies[#replies + 1] = tonumber(string.sub(first, 1, space - 1))
    replies[#replies + 1] = string.sub(first, space + 1)
    replies[#replies + 1] = 1
  else
    local state = redis.call('HMGET', state_key, 'epoch', '{REDIS_HISTORY_FIELD}')
    local epoch = state[1]
    if not epoch or state[2] ~= src then
      local now = redis.call('TIME')
      epoch = now[1] .. string.format('%06d', now[2])
      redis.call('HSET', state_key, 'epoch', epoch, '{REDIS_HISTORY_FIELD}', src, 'seq', 0)
      redis.call('DEL', history_key)
    end
    local seq = redis.call('HINCRBY', state_key, 'seq', 1)
    redis.call('EXPIRE', state_key, state_ttl)
    if tonumber(history_size) > 0 then
      redis.call('XADD', history_key, 'MAXLEN', history_size, {_entry_id('seq')}, '{_BODY_FIELD}', body)
      redis.call('EXPIRE', history_key, history_ttl)
    end
    redis.call('{publish_command}', channel, {bus_wire.lua_payload('seq', 'epoch', 'body')})
    if idempotency_key then
      redis.call('SET', idempotency_key, seq .. ' ' .. epoch, 'EX', window)
    end
    replies[#replies + 1] = seq
    replies[#replies + 1] = epoch
    replies[#replies + 1] = 0
  end
end
return replies
"""


PUBLISH_SCRIPT = publish_script()

# KEYS[1] room state hash, KEYS[2] room history stream;
# ARGV: since seq (-1 position only, -2 latest), since epoch, limit.
# A state written under another Redis history is no state: the room has no position
# (seq 0, epoch "") until its next publish starts a new epoch.
READ_HISTORY_SCRIPT = f"""
local state = redis.call('HMGET', KEYS[1], 'seq', 'epoch', '{REDIS_HISTORY_FIELD}')
if state[2] and state[3] ~= {_LUA_REDIS_HISTORY} then
  return {{0, '', {{}}}}
end
local seq = tonumber(state[1]) or 0
local epoch = state[2] or ''
local since = tonumber(ARGV[1])
local entries = {{}}
if since == -2 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
elseif since >= 0 then
  if epoch ~= ARGV[2] then since = 0 end
  entries = redis.call('XRANGE', KEYS[2], {_entry_id('(since + 1)')}, '+', 'COUNT', ARGV[3])
end
return {{seq, epoch, entries}}
"""

ROOM_PARTS_REMEMBERED = 10_000  # rooms whose publish keys and arguments a bus keeps encoded (about 400 bytes each),
# once for publishes without an idempotency key and once for those with one
MAX_PUBLISHES_PER_SCRIPT = 64  # one script holds Redis for about 10 us per publish: at most ~1 ms per batch
# Error replies after which the publish connection is replaced once its written publishes are answered:
# a demoted master (Sentinel failover), a Redis loading its data, a script cache flushed.
REPLACE_CONNECTION_ON = ("READONLY", "LOADING", "NOSCRIPT", "MASTERDOWN", "NOAUTH")
RECONNECT_JITTER = 0.5  # a reconnect waits between half and all of its backoff ceiling


# --- the bus ------------------------------------------------------------------------


@dataclass
class RedisBusSettings:
    url: RedisTarget | str  # common.redis_connect's target (TLS, Sentinel, password file), or a plain redis:// URL
    channel_prefix: str  # see BusKeys
    key_prefix: str  # see BusKeys
    timeout_s: float  # longest wait of a publish, history read or subscribe; the subscriber's liveness bound
    reconnect_base_s: float  # first subscriber reconnect delay ceiling; doubles per failure
    reconnect_cap_s: float  # largest subscriber reconnect delay
    room_state_ttl_s: int  # a room's seq/epoch outlive its last publish by this long, or by its history TTL if longer
    policy_for: Callable[[str], HistoryPolicy] = lambda room: HistoryPolicy(0, 0)
    max_connections: int = 16  # command connections to Redis (the subscriber has its own)
    idempotency_window_s: int = DEFAULT_IDEMPOTENCY_WINDOW_S  # a publish's idempotency key is remembered this long


class _PendingPublish:
    """One publish, from its call until its future is resolved."""

    __slots__ = ("future", "deadline", "key_count", "keys", "args", "sent")

    def __init__(self, future: asyncio.Future, deadline: float, key_count: int, keys: bytes, args: bytes) -> None:
        self.future = future
        self.deadline = deadline  # loop time by which its future is resolved, answered or not
        self.key_count = key_count  # 2, or 3 with an idempotency key
        self.keys = keys  # its KEYS of the publish script, as RESP bulk strings
        self.args = args  # its PUBLISH_ARGS values of ARGV, as RESP bulk strings
        self.sent = False  # written to Redis: from then on a failure leaves the outcome unknown


def _bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _bulk_value(value: str | bytes | int) -> bytes:
    """One script key or argument as a RESP bulk string (str as UTF-8, int in decimal, as redis-py sends them)."""
    if isinstance(value, str):
        value = value.encode()
    elif not isinstance(value, bytes):
        value = b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(value), value)


_BODY = object()  # stands for the body when a room's publish is encoded ahead of its publishes (_room_parts_of)


class _PublishProtocol(asyncio.Protocol):
    """The publish connection's socket: feeds what Redis sends to hiredis and hands each reply to the bus."""

    def __init__(self, bus: "RedisBus") -> None:
        self.bus = bus
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.handshake: list | None = []  # replies to AUTH / SELECT / SCRIPT LOAD; None once the connection is in use
        self.handshake_size = 0
        self.ready: asyncio.Future | None = None  # resolved with the handshake replies
        self.replace = False  # a reply said this connection is not fit for publishes: replaced once drained

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        bus = self.bus
        try:
            while (reply := self.reader.gets()) is not False:
                if self.handshake is not None:
                    self.handshake.append(reply)
                    if len(self.handshake) == self.handshake_size and self.ready is not None and not self.ready.done():
                        self.ready.set_result(self.handshake)
                else:
                    bus._on_publish_reply(self, reply)
        except hiredis.ProtocolError as exc:
            log.error("publish connection: unparsable reply from Redis (%s); dropping the connection", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        if self.replace and self.handshake is None:
            bus._replace_if_drained(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc or 'closed by Redis'}"))
        self.bus._on_publish_connection_lost(self, exc)


class RedisBus(Bus):
    publish_command = "PUBLISH"  # the Redis command of the publish script that sends to the room's channel
    max_publishes_per_script = MAX_PUBLISHES_PER_SCRIPT  # publishes one EVALSHA runs (Redis Cluster: 1, one slot)

    def __init__(self, settings: RedisBusSettings) -> None:
        super().__init__()
        self.settings = settings
        self.keys = BusKeys(settings.channel_prefix, settings.key_prefix)
        target = parse_url(settings.url) if isinstance(settings.url, str) else settings.url
        self._subscriber = RedisSubscriber(
            target.locator(settings.timeout_s),
            timeout_s=settings.timeout_s,
            backoff=BackoffPolicy(
                base_s=settings.reconnect_base_s, factor=2.0, cap_s=settings.reconnect_cap_s, jitter=RECONNECT_JITTER
            ),
            on_message=self._on_channel_message,
            on_state=lambda connected: self._on_state(connected),  # looked up per call: set_handlers may replace it
        )
        # A blocking pool: a burst of joins (each reads history) waits for a free
        # connection instead of failing with "Too many connections".
        # With Sentinel every new connection asks for the master: commands follow a failover.
        self._client = target.client(
            timeout_s=settings.timeout_s, max_connections=settings.max_connections, blocking=True, retry=False
        )
        # The publish connection: where it goes is asked anew at every connect (Sentinel: the master now).
        self._publish_locator = target.locator(settings.timeout_s)
        self._db = target.db
        self.publish_script = publish_script(self.publish_command)
        self._publish_sha = hashlib.sha1(self.publish_script.encode()).hexdigest().encode()
        # Each room's publish encoded ahead (see _room_parts_of): without, and with an idempotency key.
        self._room_parts: dict[str, tuple[int, bytes, bytes, bytes]] = {}
        self._keyed_room_parts: dict[str, tuple[int, bytes, bytes, bytes]] = {}
        self._pending: collections.deque[_PendingPublish] = collections.deque()  # not written yet, in call order
        self._sent: collections.deque[list[_PendingPublish]] = collections.deque()  # written batches, unanswered, in order
        self._publisher: _PublishProtocol | None = None
        self._connecting: asyncio.Task | None = None
        self._flush_due = False
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first publish (one per worker)

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._subscriber.start()
        if self._own_publish:
            # The publish connection opens now, so the first publish finds it ready (a failure here
            # only logs: the next publish tries again). A subclass's own publish() opens it when used.
            self._connecting = asyncio.create_task(self._connect_publisher(), name="bus-publisher-connect")

    @property
    def _own_publish(self) -> bool:
        """publish() is this module's (a subclass's publish() may change the body, or send otherwise)."""
        return type(self).publish is RedisBus.publish

    async def close(self) -> None:
        self._closed = True
        await self._subscriber.close()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        publisher, self._publisher = self._publisher, None
        if publisher is not None and publisher.transport is not None:
            publisher.transport.abort()
        self._fail_sent(PublishUnconfirmed("bus closed with the publish written, unanswered"))
        self._fail(self._pending, BusUnavailable("bus closed"))
        self._pending.clear()
        await self._publish_locator.close()
        await self._client.aclose(close_connection_pool=True)

    @property
    def connected(self) -> bool:
        return self._subscriber.connected

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(self.keys.room_of_channel(channel) for channel in self._subscriber.channels)

    @property
    def subscriber(self) -> RedisSubscriber:
        """The subscriber connection this bus receives on (for subclasses and tests)."""
        return self._subscriber

    # --- names ----------------------------------------------------------------

    def channel(self, room: str) -> str:
        return self.keys.channel(room)

    def state_key(self, room: str) -> str:
        return self.keys.state_key(room)

    def history_key(self, room: str) -> str:
        return self.keys.history_key(room)

    def history_policy(self, room: str) -> HistoryPolicy:
        return self.settings.policy_for(room)

    # --- history ----------------------------------------------------------------

    async def read_history(self, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                seq, epoch, entries = await self._client.eval(
                    READ_HISTORY_SCRIPT, 2, self.state_key(room), self.history_key(room),
                    since_seq, since_epoch, max(limit, 1),
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise BusUnavailable(f"Redis unavailable: {exc}") from None
        epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        messages = []
        for entry_id, fields in entries:
            seq_of_entry, body = bus_wire.decode_history_entry(entry_id, fields)
            messages.append(BusMessage(room, seq_of_entry, epoch_text, body))
        if since_seq == LATEST:
            messages.reverse()
        return HistoryPage(int(seq), epoch_text, messages)

    # --- publish ----------------------------------------------------------------

    async def publish(self, room: str, body: bytes, idempotency_key: str | None = None) -> Position:
        return await self._enqueue(room, body, idempotency_key)

    def publish_nowait(self, room: str, body: bytes, idempotency_key: str | None = None) -> asyncio.Future:
        if not self._own_publish:  # a subclass changes what publish() sends (node/bus_global.py)
            return super().publish_nowait(room, body, idempotency_key)
        return self._enqueue(room, body, idempotency_key)

    def _enqueue(self, room: str, body: bytes, idempotency_key: str | None) -> asyncio.Future:
        """Queue one publish for the next batch; its future is resolved within timeout_s (see the docstring)."""
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            raise ValueError("an idempotency key is 1..64 printable ASCII characters")
        if self._closed:
            raise BusUnavailable("bus closed")
        loop = self._loop
        if loop is None:  # asyncio.get_running_loop() costs a getpid() call: asked once, at the first publish
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        deadline = loop.time() + self.settings.timeout_s
        self._pending.append(_PendingPublish(future, deadline, *self._publish_parts(room, body, idempotency_key)))
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush_publishes)
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(deadline, self._on_deadline)
        return future

    def publish_keys_and_args(
        self, room: str, body: bytes, idempotency_key: str | None
    ) -> tuple[list[str], list[str | bytes | int]]:
        """One publish's KEYS and its PUBLISH_ARGS values of ARGV, in the order the publish script reads
        them (documented above it): the one place that order is written. An idempotency key adds one
        key, the last. This bus encodes them once per room (`_room_parts_of`); node/bus_cluster.py hands
        them to redis-py."""
        policy = self.settings.policy_for(room)
        keys = [self.state_key(room), self.history_key(room)]
        if idempotency_key is not None:
            keys.append(self.keys.idempotency_key(room, idempotency_key))
        return keys, [len(keys), self.channel(room), body, max(self.settings.room_state_ttl_s, policy.ttl_s),
                      policy.size, policy.ttl_s, self.settings.idempotency_window_s]

    def _publish_parts(self, room: str, body: bytes, idempotency_key: str | None) -> tuple[int, bytes, bytes]:
        """One publish's number of KEYS, its KEYS and its PUBLISH_ARGS ARGV values, as RESP bulk strings."""
        if idempotency_key is None:
            parts = self._room_parts.get(room) or self._room_parts_of(room, self._room_parts, None)
            key_count, keys, before, after = parts
            return key_count, keys, b"%b$%d\r\n%b\r\n%b" % (before, len(body), body, after)
        parts = self._keyed_room_parts.get(room) or self._room_parts_of(room, self._keyed_room_parts, "-")
        key_count, keys, before, after = parts
        keys += _bulk(self.keys.idempotency_key(room, idempotency_key).encode())
        return key_count, keys, b"%b$%d\r\n%b\r\n%b" % (before, len(body), body, after)

    def _room_parts_of(
        self, room: str, memory: dict[str, tuple[int, bytes, bytes, bytes]], idempotency_key: str | None
    ) -> tuple[int, bytes, bytes, bytes]:
        """A room's `publish_keys_and_args` for publishes without (`idempotency_key` None) or with an
        idempotency key (any: only the key it adds matters), encoded as RESP: key count, KEYS (with a key:
        but the last, added per publish), ARGV before the body, ARGV after it. Remembered in `memory` (at
        most ROOM_PARTS_REMEMBERED rooms: it is emptied when it is full)."""
        keys, args = self.publish_keys_and_args(room, _BODY, idempotency_key)  # type: ignore[arg-type]
        key_count = len(keys)
        if idempotency_key is not None:
            del keys[-1]  # the publish's own idempotency key
        at = args.index(_BODY)
        parts = (
            key_count, b"".join(map(_bulk_value, keys)),
            b"".join(map(_bulk_value, args[:at])), b"".join(map(_bulk_value, args[at + 1:])),
        )
        if len(memory) >= ROOM_PARTS_REMEMBERED:
            memory.clear()
        memory[room] = parts
        return parts

    def _script_command(self, batch: list[_PendingPublish]) -> bytes:
        """The EVALSHA of one batch of publishes, as RESP."""
        key_count = sum(item.key_count for item in batch)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n%b" % (
            3 + key_count + 1 + PUBLISH_ARGS * len(batch), self._publish_sha, _bulk(b"%d" % key_count)
        )
        return b"".join([head, *(item.keys for item in batch), _bulk(b"%d" % len(batch)), *(item.args for item in batch)])

    def _flush_publishes(self) -> None:
        """Write every queued publish, max_publishes_per_script per EVALSHA, or open the connection first."""
        self._flush_due = False
        pending = self._pending
        if not pending:
            return
        publisher = self._publisher
        if publisher is None or publisher.handshake is not None or publisher.replace:
            if publisher is not None and publisher.replace:
                self._replace_if_drained(publisher)
            elif publisher is None and (self._connecting is None or self._connecting.done()) and not self._closed:
                self._connecting = asyncio.create_task(self._connect_publisher(), name="bus-publisher-connect")
            return
        live = [item for item in pending if not item.future.done()]  # done: its caller gave up before the write
        pending.clear()
        commands = []
        size = self.max_publishes_per_script
        for start in range(0, len(live), size):
            batch = live[start:start + size]
            for item in batch:
                item.sent = True
            self._sent.append(batch)
            commands.append(self._script_command(batch))
        if commands:
            assert publisher.transport is not None
            publisher.transport.write(b"".join(commands))

    async def _connect_publisher(self) -> None:
        """Open the publish connection (AUTH, SELECT, SCRIPT LOAD), then write what is queued.

        Failing, everything queued fails with BusUnavailable (nothing was written); the next publish tries again.
        """
        loop = asyncio.get_running_loop()
        protocol: _PublishProtocol | None = None
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                address = await self._publish_locator.endpoint()
                _, protocol = await loop.create_connection(
                    lambda: _PublishProtocol(self), address.host, address.port,
                    ssl=address.ssl, server_hostname=address.host if address.ssl is not None else None,
                )
                commands = []
                if address.password is not None:
                    auth = ("AUTH", address.username, address.password) if address.username else ("AUTH", address.password)
                    commands.append(encode_command(*auth))
                if self._db:
                    commands.append(encode_command("SELECT", str(self._db)))
                commands.append(encode_command("SCRIPT", "LOAD", self.publish_script))
                protocol.handshake_size = len(commands)
                protocol.ready = loop.create_future()
                self._publisher = protocol
                assert protocol.transport is not None
                protocol.transport.write(b"".join(commands))
                replies = await protocol.ready
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(f"Redis refused the publish connection: {reply}")
            if replies[-1] != self._publish_sha:
                raise ConnectionError(f"SCRIPT LOAD answered {replies[-1]!r}, expected {self._publish_sha!r}")
        except (OSError, TimeoutError, RedisError, ConnectionError) as exc:  # ConnectionError: Sentinel found no master
            log.warning("publish connection to Redis failed: %s", str(exc) or type(exc).__name__)
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()
            if self._publisher is protocol:
                self._publisher = None
            self._fail(self._pending, BusUnavailable(f"Redis: {str(exc) or type(exc).__name__}"))
            self._pending.clear()
            return
        protocol.handshake = None
        self._flush_publishes()

    def _on_publish_reply(self, protocol: _PublishProtocol, reply: object) -> None:
        """Redis's answer to the oldest written batch: a position per publish, or one error for all."""
        if protocol is not self._publisher or not self._sent:
            return  # a dropped connection's late bytes
        batch = self._sent.popleft()
        if isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            if text.startswith(REPLACE_CONNECTION_ON):
                protocol.replace = True  # refused before any write: nothing of the batch ran
                self._fail(batch, BusUnavailable(f"publish failed: {text}"))
            else:  # stopped mid-way (the publishes before the failing one stay done)
                log.error("publish script failed: %s", text)
                self._fail(batch, PublishUnconfirmed(f"publish failed, possibly after publishing: {text}"))
            return
        values = reply  # seq, epoch, duplicate per publish, in batch order
        for index, item in enumerate(batch):
            future = item.future
            if not future.done():
                at = index * 3
                future.set_result(Position(values[at], values[at + 1].decode(), duplicate=values[at + 2] == 1))  # type: ignore[index]

    def _replace_if_drained(self, protocol: _PublishProtocol) -> None:
        """Close a connection marked for replacement once every publish written to it is answered."""
        if protocol is self._publisher and not self._sent:
            log.warning("publish connection refused a publish; opening a new one")
            self._publisher = None
            if protocol.transport is not None:
                protocol.transport.close()
            if self._pending and not self._flush_due:
                self._flush_due = True
                asyncio.get_running_loop().call_soon(self._flush_publishes)

    def _on_publish_connection_lost(self, protocol: _PublishProtocol, exc: Exception | None) -> None:
        if protocol is not self._publisher:
            return
        self._publisher = None
        if self._sent:
            log.warning("publish connection lost with %d batches unanswered: %s", len(self._sent), exc or "closed by Redis")
        self._fail_sent(PublishUnconfirmed(f"Redis connection lost: {exc or 'closed by Redis'}"))
        if self._pending and not self._flush_due and not self._closed:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_publishes)

    def _on_deadline(self) -> None:
        """The bus's one publish timer: fail what is due, then wait for the next oldest deadline."""
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout_s = self.settings.timeout_s
        if self._sent and self._sent[0][0].deadline <= now:
            # Redis has not answered the oldest written publish in time: the connection is dropped, and
            # everything written to it is unconfirmed (its replies could no longer be matched).
            publisher, self._publisher = self._publisher, None
            log.warning("Redis did not answer a publish within %ss; dropping the publish connection", timeout_s)
            if publisher is not None and publisher.transport is not None:
                publisher.transport.abort()
            self._fail_sent(PublishUnconfirmed(f"Redis did not confirm within {timeout_s}s"))
        pending = self._pending
        while pending and pending[0].deadline <= now:
            item = pending.popleft()
            if not item.future.done():
                item.future.set_exception(BusUnavailable(f"Redis did not answer within {timeout_s}s"))
        oldest = [self._sent[0][0].deadline] if self._sent else []
        if pending:
            oldest.append(pending[0].deadline)
        if oldest:
            self._deadline_timer = loop.call_at(min(oldest), self._on_deadline)

    def _fail_sent(self, error: BusUnavailable) -> None:
        for batch in self._sent:
            self._fail(batch, error)
        self._sent.clear()

    @staticmethod
    def _fail(items, error: BusUnavailable) -> None:
        """Fail every unresolved future of `items` with (a copy of) `error`."""
        for item in items:
            if not item.future.done():
                item.future.set_exception(type(error)(str(error)))

    # --- subscribe ------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        channel = self.channel(room).encode()
        self._subscriber.subscribe(channel)
        await self._await_confirmation(self._subscriber.until_confirmed(channel))

    def unsubscribe(self, room: str) -> None:
        self._subscriber.unsubscribe(self.channel(room).encode())

    async def _await_confirmation(self, future: asyncio.Future) -> None:
        """Wait for a subscription's confirmation, or raise BusUnavailable after the bus timeout."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await asyncio.shield(future)
        except TimeoutError:
            raise BusUnavailable(f"subscription not confirmed within {self.settings.timeout_s}s") from None

    # --- receive --------------------------------------------------------------

    def _room_message(self, channel: bytes, body: bytes) -> tuple[str, bytes]:
        """The room and room body of a message `body` read on `channel`; ValueError if it has none."""
        return self.keys.room_of_channel(channel), body

    def _on_channel_message(self, channel: bytes, payload: bytes) -> None:
        # Anyone with access to Redis can PUBLISH to a room channel: a payload no worker
        # wrote is dropped here, not allowed to kill the connection that carries every room.
        try:
            seq, epoch, tagged = bus_wire.decode(payload)
            room, body = self._room_message(channel, tagged)
        except ValueError as exc:  # MalformedBusMessage, UnicodeDecodeError
            log.error("bus subscriber: dropping a malformed message on %r: %s", channel, exc)
            return
        message = BusMessage(room, seq, epoch, body)
        try:
            self._deliver(message)
        except Exception:
            log.exception("bug while delivering room %s seq %d; message dropped", message.room, message.seq)
