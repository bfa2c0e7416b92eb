"""The Redis bus: one channel per room on a single Redis, for a cluster of workers.

That Redis is reached through common/redis_connect.py (TLS, password file,
or a master found through Sentinel, which both connections follow across a
failover); a promoted replica's other replication ID starts new epochs.

Owns what a worker does with Redis for room traffic, in three parts:

- Names: every channel and key the bus uses for a room (`BusKeys`). These are
  the data plane's names; the control plane's are in common/keys.py.
- Publish and history: commands go through redis-py's asyncio client.
  Publishes queued in one event-loop turn go out as one pipeline of EVALs;
  each EVAL assigns the room's next sequence number, appends to the room's
  history stream and PUBLISHes in one atomic script, so the channel order is
  the sequence order. The room's state remembers the Redis replication ID it
  was written under; a state from another one (Redis restarted from a
  snapshot or AOF, a replica promoted) is treated as lost: new epoch. The payload is node/bus_wire.py's format; the script is
  built from its Lua fragments. A publish that cannot finish within
  `timeout_s` raises BusUnavailable (or PublishUnconfirmed); it never hangs.
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
`_room_message()`, and use `subscriber` and `_await_confirmation()`; nothing
else here is meant for them.

It must not know about WebSocket connections or members: that is the hub's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
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
from node.redis_subscriber import RedisSubscriber
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

# KEYS[1] room state hash, KEYS[2] room history stream, KEYS[3] (optional) the publish's
# idempotency key; ARGV: channel, body, state TTL (s), history size, history TTL (s),
# idempotency window (s). Returns {seq, epoch, 1 if KEYS[3] was already used (nothing published) else 0}.
# A key already used returns the first publish's position even if the room's epoch changed since:
# that is where the message was published.
# The epoch is born with the room's state: when Redis lost the hash, or the hash was
# written under another Redis history (restored from disk, failed over), the room's
# position cannot be trusted to continue what clients saw, so the next publish starts
# a new epoch at seq 1 (and drops any stale history) so clients can tell. Sequence,
# history and publish happen in one script, so no subscriber can see an order
# different from the history.
PUBLISH_SCRIPT = f"""
if KEYS[3] then
  local first = redis.call('GET', KEYS[3])
  if first then
    local space = string.find(first, ' ', 1, true)
    return {{tonumber(string.sub(first, 1, space - 1)), string.sub(first, space + 1), 1}}
  end
end
local src = {_LUA_REDIS_HISTORY}
local state = redis.call('HMGET', KEYS[1], 'epoch', '{REDIS_HISTORY_FIELD}')
local epoch = state[1]
if not epoch or state[2] ~= src then
  local now = redis.call('TIME')
  epoch = now[1] .. string.format('%06d', now[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, '{REDIS_HISTORY_FIELD}', src, 'seq', 0)
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], {_entry_id('seq')}, '{_BODY_FIELD}', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
redis.call('PUBLISH', ARGV[1], {bus_wire.lua_payload('seq', 'epoch', 'ARGV[2]')})
if KEYS[3] then
  redis.call('SET', KEYS[3], seq .. ' ' .. epoch, 'EX', ARGV[6])
end
return {{seq, epoch, 0}}
"""

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

MAX_PIPELINE_COMMANDS = 512
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


@dataclass
class _PendingPublish:
    room: str
    body: bytes
    idempotency_key: str | None
    future: asyncio.Future = field(repr=False)
    sent: bool = False  # handed to Redis: from then on a failure leaves the outcome unknown


class RedisBus(Bus):
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
        self._pending: list[_PendingPublish] = []
        self._flusher: asyncio.Task | None = None

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._subscriber.start()

    async def close(self) -> None:
        await self._subscriber.close()
        if self._flusher:
            self._flusher.cancel()
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(BusUnavailable("bus closed"))
        self._pending.clear()
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

    # --- publish and history --------------------------------------------------

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

    async def publish(self, room: str, body: bytes, idempotency_key: str | None = None) -> Position:
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            raise ValueError("an idempotency key is 1..64 printable ASCII characters")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingPublish(room, body, idempotency_key, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_publishes(), name="bus-publisher")
        pending = self._pending[-1]
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            future.cancel()  # a batch not yet sent skips it
            if pending.sent:
                raise PublishUnconfirmed(f"Redis did not confirm within {self.settings.timeout_s}s") from None
            raise BusUnavailable(f"Redis did not answer within {self.settings.timeout_s}s") from None

    async def _flush_publishes(self) -> None:
        while self._pending:
            batch = [item for item in self._pending[:MAX_PIPELINE_COMMANDS] if not item.future.done()]
            del self._pending[:MAX_PIPELINE_COMMANDS]
            if not batch:
                continue
            for item in batch:
                item.sent = True
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    pipe = self._client.pipeline(transaction=False)
                    for item in batch:
                        policy = self.settings.policy_for(item.room)
                        keys = [self.state_key(item.room), self.history_key(item.room)]
                        if item.idempotency_key is not None:
                            keys.append(self.keys.idempotency_key(item.room, item.idempotency_key))
                        pipe.eval(
                            PUBLISH_SCRIPT, len(keys), *keys,
                            self.channel(item.room), item.body, max(self.settings.room_state_ttl_s, policy.ttl_s),
                            policy.size, policy.ttl_s, self.settings.idempotency_window_s,
                        )
                    results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("publish batch of %d failed: %s", len(batch), exc)
                # A refused connection published nothing; a timeout or a connection lost
                # mid-way may have published some of the batch.
                never_sent = isinstance(exc, RedisConnectionError) and "connecting" in str(exc)
                error = BusUnavailable if never_sent else PublishUnconfirmed
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error(f"Redis: {exc or type(exc).__name__}"))
                continue
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(BusUnavailable(f"publish failed: {result}"))
                else:
                    seq, epoch, duplicate = result
                    epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
                    item.future.set_result(Position(int(seq), epoch_text, duplicate=bool(duplicate)))

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
