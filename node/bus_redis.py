"""The Redis bus: one channel per room on a single Redis, for a cluster of workers.

Owns the two connections a worker keeps to Redis and how they fail:

- Commands (publish) go through redis-py's asyncio client. Publishes queued
  in one event-loop turn go out as one pipeline of EVALs; each EVAL assigns
  the room's next sequence number and PUBLISHes in one atomic script, so the
  channel order is the sequence order. A publish that cannot finish within
  `bus_timeout_s` raises BusUnavailable; it never hangs.
- The subscriber is one dedicated connection carrying every hosted room's
  channel and nothing else. It is a small asyncio protocol over hiredis'
  reply parser so that every reply in one socket read is delivered in one
  loop turn (fan-out then coalesces writes per member) and so subscription
  confirmations, liveness pings and reconnects are explicit: after a lost
  connection it reconnects with capped, jittered backoff and re-subscribes
  exactly the rooms still hosted.

It must not know about WebSocket connections or members: that is the hub's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote, urlparse

import hiredis
import redis.asyncio as redis_async
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from node.bus import LATEST, Bus, BusMessage, BusUnavailable, HistoryPage, Position, PublishUnconfirmed
from node.history import HistoryPolicy

log = logging.getLogger("ringcast.bus")

# KEYS[1] room state hash, KEYS[2] room history stream;
# ARGV: channel, body, state TTL (s), history size, history TTL (s).
# The epoch is born with the room's state: when Redis loses the hash, the
# next publish starts a new epoch at seq 1 (and drops any stale history) so
# clients can tell. Sequence, history and publish happen in one script, so no
# subscriber can see an order different from the history.
PUBLISH_SCRIPT = """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local now = redis.call('TIME')
  epoch = now[1] .. string.format('%06d', now[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'b', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. epoch .. ' ' .. ARGV[2])
return {seq, epoch}
"""

# KEYS[1] room state hash, KEYS[2] room history stream;
# ARGV: since seq (-1 position only, -2 latest), since epoch, limit.
READ_HISTORY_SCRIPT = """
local state = redis.call('HMGET', KEYS[1], 'seq', 'epoch')
local seq = tonumber(state[1]) or 0
local epoch = state[2] or ''
local since = tonumber(ARGV[1])
local entries = {}
if since == -2 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
elseif since >= 0 then
  if epoch ~= ARGV[2] then since = 0 end
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', ARGV[3])
end
return {seq, epoch, entries}
"""

MAX_PIPELINE_COMMANDS = 512
RESYNC_PING = b"ringcast-resync"  # payload of the PING that marks the end of a re-subscribe


@dataclass
class RedisBusSettings:
    url: str
    channel_prefix: str
    key_prefix: str
    timeout_s: float
    reconnect_base_s: float
    reconnect_cap_s: float
    room_state_ttl_s: int
    policy_for: Callable[[str], HistoryPolicy] = lambda room: HistoryPolicy(0, 0)
    max_connections: int = 16  # command connections to Redis (the subscriber has its own)


def encode_command(*args: str | bytes) -> bytes:
    """One RESP array command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass
class _PendingPublish:
    room: str
    body: bytes
    future: asyncio.Future = field(repr=False)
    sent: bool = False  # handed to Redis: from then on a failure leaves the outcome unknown


class _SubscriberProtocol(asyncio.Protocol):
    """Feeds socket bytes to hiredis and hands each complete reply on."""

    def __init__(self, bus: "RedisBus") -> None:
        self.bus = bus
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bus._last_rx = asyncio.get_running_loop().time()  # any byte from Redis proves it alive
        self.reader.feed(data)
        on_reply = self.bus._on_subscriber_reply
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bus._on_subscriber_lost(self)


class RedisBus(Bus):
    def __init__(self, settings: RedisBusSettings) -> None:
        super().__init__()
        self.settings = settings
        parsed = urlparse(settings.url)
        if parsed.scheme not in ("redis", ""):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r} (use redis://HOST:PORT/DB)")
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        self._prefix = settings.channel_prefix.encode()
        # A blocking pool: a burst of joins (each reads history) waits for a free
        # connection instead of failing with "Too many connections".
        pool = redis_async.BlockingConnectionPool.from_url(
            settings.url,
            max_connections=settings.max_connections,
            timeout=settings.timeout_s,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
        )
        self._client = redis_async.Redis(connection_pool=pool, retry=None)
        self._pending: list[_PendingPublish] = []
        self._flusher: asyncio.Task | None = None
        # subscriber state
        self._rooms: set[str] = set()  # desired subscriptions
        self._protocol: _SubscriberProtocol | None = None
        self._live = False  # connected and re-subscribed
        # per room: one entry per SUBSCRIBE sent on the live connection, each with its waiters
        self._sent_subscribes: dict[str, collections.deque[list[asyncio.Future]]] = {}
        self._waiting_for_connection: dict[str, list[asyncio.Future]] = {}
        self._pong_due: float | None = None
        self._last_rx = 0.0  # loop time of the last byte read from the subscriber connection
        self._runner: asyncio.Task | None = None
        self._closing = False
        self._lost = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run_subscriber(), name="bus-subscriber")

    async def close(self) -> None:
        self._closing = True
        if self._runner:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        if self._protocol and self._protocol.transport:
            self._protocol.transport.close()
        if self._flusher:
            self._flusher.cancel()
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(BusUnavailable("bus closed"))
        self._pending.clear()
        await self._client.aclose(close_connection_pool=True)

    @property
    def connected(self) -> bool:
        return self._live

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(self._rooms)

    # --- publish --------------------------------------------------------------

    def channel(self, room: str) -> str:
        return self.settings.channel_prefix + room

    def state_key(self, room: str) -> str:
        return f"{self.settings.key_prefix}room:{{{room}}}"

    def history_key(self, room: str) -> str:
        return f"{self.settings.key_prefix}hist:{{{room}}}"

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
            body = fields[fields.index(b"b") + 1]
            messages.append(BusMessage(room, int(entry_id.split(b"-", 1)[0]), epoch_text, body))
        if since_seq == LATEST:
            messages.reverse()
        return HistoryPage(int(seq), epoch_text, messages)

    async def publish(self, room: str, body: bytes) -> Position:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingPublish(room, body, future))
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
                        pipe.eval(
                            PUBLISH_SCRIPT, 2, self.state_key(item.room), self.history_key(item.room),
                            self.channel(item.room), item.body, max(self.settings.room_state_ttl_s, policy.ttl_s),
                            policy.size, policy.ttl_s,
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
                    seq, epoch = result
                    item.future.set_result(Position(int(seq), epoch.decode() if isinstance(epoch, bytes) else str(epoch)))

    # --- subscribe --------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self._rooms.add(room)
        if self._live and self._protocol and self._protocol.transport:
            self._sent_subscribes.setdefault(room, collections.deque()).append([future])
            self._protocol.transport.write(encode_command("SUBSCRIBE", self.channel(room)))
        else:
            self._waiting_for_connection.setdefault(room, []).append(future)
        await self._await_confirmation(future)

    async def _await_confirmation(self, future: asyncio.Future) -> None:
        """Wait for a SUBSCRIBE's confirmation, or raise BusUnavailable after the bus timeout."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await asyncio.shield(future)
        except TimeoutError:
            raise BusUnavailable(f"subscription not confirmed within {self.settings.timeout_s}s") from None

    def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)
        waiting = self._waiting_for_connection.pop(room, [])
        for future in waiting:
            if not future.done():
                future.set_result(None)
        if self._live and self._protocol and self._protocol.transport:
            self._protocol.transport.write(encode_command("UNSUBSCRIBE", self.channel(room)))

    # --- subscriber connection ------------------------------------------------

    async def _run_subscriber(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                await self._connect_subscriber(loop)
                failures = 0
                await self._watch_subscriber(loop)
            except (OSError, TimeoutError, ConnectionError, RuntimeError) as exc:
                if not self._closing:
                    log.warning("bus subscriber: %s", exc)
            self._drop_subscriber()
            if self._closing:
                return
            failures += 1
            delay = min(self.settings.reconnect_cap_s, self.settings.reconnect_base_s * 2 ** (failures - 1))
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _connect_subscriber(self, loop: asyncio.AbstractEventLoop) -> None:
        async with asyncio.timeout(self.settings.timeout_s):
            transport, protocol = await loop.create_connection(
                lambda: _SubscriberProtocol(self), self._host, self._port
            )
        self._protocol = protocol  # type: ignore[assignment]
        self._lost = asyncio.Event()
        if self._password is not None:
            auth = ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)
            transport.write(encode_command(*auth))  # reply ("OK" or error) is read by _on_subscriber_reply
        # Re-subscribe the rooms hosted now; every waiter (old or new) rides on this one SUBSCRIBE.
        self._sent_subscribes = {}
        rooms = sorted(self._rooms)
        for room in rooms:
            waiters = self._waiting_for_connection.pop(room, [])
            self._sent_subscribes[room] = collections.deque([waiters])
        for future_list in self._waiting_for_connection.values():  # rooms unsubscribed meanwhile
            for future in future_list:
                if not future.done():
                    future.set_result(None)
        self._waiting_for_connection = {}
        for start in range(0, len(rooms), 1000):
            transport.write(encode_command("SUBSCRIBE", *[self.channel(r) for r in rooms[start:start + 1000]]))
        # Redis answers in order: this PONG comes after every SUBSCRIBE above is
        # confirmed, so only then is the bus "connected" (the hub's gap fill relies on it).
        transport.write(encode_command("PING", RESYNC_PING))
        self._pong_due = None
        self._live = True
        log.info("bus subscriber connected to %s:%d, re-subscribing %d rooms", self._host, self._port, len(rooms))

    async def _watch_subscriber(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping the subscriber connection; a silent Redis (paused, partitioned) is a lost one."""
        interval = self.settings.timeout_s / 2
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), interval)
                return
            except TimeoutError:
                pass
            if self._pong_due is not None and loop.time() > self._pong_due:
                # A busy event loop may not have read the answer yet: let pending reads run first.
                await asyncio.sleep(0)
                silent_s = loop.time() - self._last_rx
                if self._pong_due is not None and loop.time() > self._pong_due and silent_s > self.settings.timeout_s:
                    raise TimeoutError(f"Redis did not answer a ping within {self.settings.timeout_s}s")
            now = loop.time()
            if self._pong_due is None and self._protocol and self._protocol.transport:
                self._pong_due = now + self.settings.timeout_s
                self._protocol.transport.write(encode_command("PING"))

    def _drop_subscriber(self) -> None:
        was_live = self._live
        self._live = False
        protocol, self._protocol = self._protocol, None
        if protocol and protocol.transport:
            protocol.transport.abort()
        # SUBSCRIBEs in flight are lost with the connection; their waiters wait for the re-subscribe.
        for room, entries in self._sent_subscribes.items():
            if room in self._rooms:
                bucket = self._waiting_for_connection.setdefault(room, [])
                for waiters in entries:
                    bucket.extend(waiters)
            else:
                for waiters in entries:
                    for future in waiters:
                        if not future.done():
                            future.set_result(None)
        self._sent_subscribes = {}
        if was_live:
            log.warning("bus subscriber lost; %d rooms to re-subscribe", len(self._rooms))
            self._on_state(False)

    def _on_subscriber_lost(self, protocol: _SubscriberProtocol) -> None:
        if protocol is self._protocol:
            self._lost.set()

    def _on_pong(self, payload: bytes) -> None:
        if payload == RESYNC_PING:
            self._on_state(True)  # every SUBSCRIBE sent before it is confirmed
        else:
            self._pong_due = None

    def _on_subscriber_reply(self, reply: object) -> None:
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                # Anyone with access to Redis can PUBLISH to a room channel: a payload no worker
                # wrote is dropped here, not allowed to kill the connection that carries every room.
                try:
                    channel, payload = reply[1], reply[2]
                    seq, epoch, body = payload.split(b" ", 2)
                    message = BusMessage(channel[len(self._prefix):].decode(), int(seq), epoch.decode(), body)
                except (ValueError, IndexError, TypeError, AttributeError):  # UnicodeDecodeError is a ValueError
                    log.error("bus subscriber: dropping a malformed message on %r", reply[1:2])
                    return
                try:
                    self._deliver(message)
                except Exception:
                    log.exception("bug while delivering room %s seq %d; message dropped", message.room, message.seq)
                return
            if kind == b"subscribe":
                room = reply[1][len(self._prefix):].decode()
                entries = self._sent_subscribes.get(room)
                if entries:
                    for future in entries.popleft():
                        if not future.done():
                            future.set_result(None)
                    if not entries:
                        del self._sent_subscribes[room]
                return
            if kind == b"pong":
                self._on_pong(reply[1])
                return
            if kind == b"unsubscribe":
                return
        if reply == b"PONG" or reply == RESYNC_PING:
            # With no room subscribed the connection is in normal mode, where Redis
            # answers PING with +PONG and PING <payload> with the bare payload.
            self._on_pong(b"" if reply == b"PONG" else reply)
            return
        if isinstance(reply, hiredis.ReplyError):
            log.error("bus subscriber: Redis error %s", reply)
            if self._protocol and self._protocol.transport:
                self._protocol.transport.close()
            return
        # "OK" from AUTH and anything else harmless
