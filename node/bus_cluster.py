"""The Redis Cluster bus (`--bus redis-cluster`): each room's traffic on the shard that owns its slot.

Everything of node/bus_redis.py (sequence, epoch, history, idempotency,
resync after a reconnect) on a Redis Cluster (`redis+cluster://` seed nodes,
common/redis_connect.py), with these differences only:

- Names: a room's channel carries the room's hash tag,
  `<channel_prefix>{<room>}`, so it is in the same slot as the room's state,
  history and idempotency keys (`BusKeys`, which already tag them).
- Publish: node/bus_redis.py's publish script, built with SPUBLISH
  (sharded pub/sub, Redis 7) and run for one publish at a time (its keys
  must be one slot's), so it runs on, and its message stays on, the room's
  shard. Publishes queued in one event-loop turn go out as one redis-py
  cluster pipeline of EVALSHAs (grouped per master, each master's in call
  order, one batch after another), so one caller's publishes keep their
  order; a master without the script (new, or a promoted replica) gets
  those publishes again, in order, as EVAL. History reads go through the same
  `RedisCluster` client, which follows MOVED replies and failovers; as it
  fails a command past `max_connections` per master instead of waiting,
  history reads wait for one of `max_connections - 2` turns (bounded by
  `timeout_s`, then BusUnavailable).
- Receive (`ShardedSubscriber`): one node/redis_subscriber.py connection
  (SSUBSCRIBE) per master that owns the slot of at least one hosted room,
  never one per room. It follows the cluster's slot map (redis-py's, asked
  anew with CLUSTER SLOTS): when a shard's connection is lost, a channel is
  refused (-MOVED), or Redis unsubscribes a channel by itself (`sunsubscribe`:
  its slot left the node), the map is read again (with backoff until it
  settles) and the channels whose slot has another master now are
  subscribed there; a master left with no channel is let go.
- State: the bus is connected only while the slot map is known, every
  shard's connection is up with its channels confirmed, and no channel waits
  to be subscribed on its new owner. Any of these failing reports
  disconnected (so /readyz is 503), and reporting connected again after it
  makes the hub fill every room's gap from history (node/worker.py).

It must not know about WebSocket connections or members (the hub's), nor
parse URLs or build clients (common/redis_connect.py's).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from common.redis_connect import RedisTarget, parse_url
from node.bus import BusUnavailable, HistoryPage, Position, PublishUnconfirmed, valid_idempotency_key
from node.bus_redis import RECONNECT_JITTER, RedisBus, RedisBusSettings
from node.redis_subscriber import SHARDED, MessageFn, RedisSubscriber, StateFn
from router.backoff import BackoffPolicy

log = logging.getLogger("ringcast.bus.cluster")

MAX_PIPELINE_COMMANDS = 512  # publishes in one cluster pipeline; more wait for the next one

Address = tuple[str, int]


class ShardedSubscriber:
    """Every hosted room's shard channel, on one SSUBSCRIBE connection per owning master.

    It offers what RedisBus asks of its subscriber (`start`, `close`,
    `connected`, `channels`, `subscribe`, `unsubscribe`, `until_confirmed`).
    """

    def __init__(
        self,
        target: RedisTarget,
        slot_map,  # a redis.asyncio.RedisCluster: its keyslot() and its nodes manager's slot map
        *,
        timeout_s: float,
        backoff: BackoffPolicy,
        on_message: MessageFn,
        on_state: StateFn,
    ) -> None:
        self.target = target
        self.cluster = slot_map
        self.timeout_s = timeout_s
        self.backoff = backoff
        self._on_message = on_message
        self._on_state = on_state
        self.shards: dict[Address, RedisSubscriber] = {}
        self._up: set[Address] = set()  # shards whose connection is up with every channel confirmed
        self._owner: dict[bytes, Address] = {}  # channel -> the shard it is subscribed on
        self._wanted: set[bytes] = set()
        self._unsettled: set[bytes] = set()  # wanted, not (yet) confirmed on its slot's owner
        self._placing: dict[Address, set[bytes]] = {}  # (re)subscribed there, confirmed by that shard's next resync
        self._settle_waiters: dict[bytes, list[asyncio.Future]] = {}
        self._map_known = False
        self._reported = False
        self._wake = asyncio.Event()
        self._follower: asyncio.Task | None = None
        self._closing = False

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._wake.set()
        self._follower = asyncio.create_task(self._follow(), name="bus-cluster-topology")

    async def close(self) -> None:
        self._closing = True
        if self._follower is not None:
            self._follower.cancel()
            try:
                await self._follower
            except asyncio.CancelledError:
                pass
        for shard in list(self.shards.values()):
            await shard.close()
        self.shards.clear()
        self._release_all()

    @property
    def connected(self) -> bool:
        return self._map_known and not self._unsettled and all(address in self._up for address in self.shards)

    @property
    def channels(self) -> frozenset[bytes]:
        return frozenset(self._wanted)

    # --- channels ---------------------------------------------------------------

    def subscribe(self, channel: bytes) -> None:
        self._wanted.add(channel)
        owner = self._owner_now(channel)
        if owner is None:
            self._unsettle(channel)
            return
        self._place(channel, owner)

    def unsubscribe(self, channel: bytes) -> None:
        self._wanted.discard(channel)
        self._unsettled.discard(channel)
        for future in self._settle_waiters.pop(channel, []):
            if not future.done():
                future.set_result(None)
        owner = self._owner.pop(channel, None)
        if owner is not None and owner in self.shards:
            self.shards[owner].unsubscribe(channel)
        self._report()

    def until_confirmed(self, channel: bytes) -> asyncio.Future[None]:
        """Resolved once the channel is confirmed on its slot's owner (or no longer wanted)."""
        owner = self._owner.get(channel)
        if channel in self._unsettled or owner is None or owner not in self.shards:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if channel not in self._wanted:
                future.set_result(None)
            else:
                self._settle_waiters.setdefault(channel, []).append(future)
                self._unsettle(channel)
            return future
        return self.shards[owner].until_confirmed(channel)

    # --- shards -----------------------------------------------------------------

    def _owner_now(self, channel: bytes) -> Address | None:
        """The master of the channel's slot in the client's slot map, None if unknown."""
        if not self._map_known:
            return None
        nodes = self.cluster.nodes_manager.slots_cache.get(self.cluster.keyslot(channel))
        if not nodes:
            return None
        return nodes[0].host, int(nodes[0].port)

    def _place(self, channel: bytes, owner: Address) -> None:
        """Subscribe `channel` on `owner`'s connection (and off the one it was on)."""
        previous = self._owner.get(channel)
        if previous is not None and previous != owner and previous in self.shards:
            self.shards[previous].unsubscribe(channel)
        shard = self.shards.get(owner)
        if shard is None:
            shard = self._open_shard(owner)
        self._owner[channel] = owner
        shard.subscribe(channel)

    def _open_shard(self, address: Address) -> RedisSubscriber:
        host, port = address
        shard = RedisSubscriber(
            self.target.node_locator(host, port, self.timeout_s),
            timeout_s=self.timeout_s,
            backoff=self.backoff,
            on_message=self._on_message,
            on_state=lambda up: self._on_shard_state(address, up),
            commands=SHARDED,
            on_unsubscribed=lambda channel: self._on_dropped(address, channel),
        )
        self.shards[address] = shard
        shard.start()
        log.info("bus: shard subscriber opened on %s:%d", host, port)
        return shard

    def _on_shard_state(self, address: Address, up: bool) -> None:
        if up:
            # Every SSUBSCRIBE sent to this shard before its resync PING is confirmed, in this very
            # turn: any message read after it is held by the hub's gap fill that `_report` starts.
            self._up.add(address)
            for channel in self._placing.pop(address, ()):
                if self._owner.get(channel) == address:
                    self._unsettled.discard(channel)
                    for future in self._settle_waiters.pop(channel, []):
                        if not future.done():
                            future.set_result(None)
        else:
            self._up.discard(address)
            self._wake.set()  # a lost shard: its slots may have another master now
        self._report()

    def _on_dropped(self, address: Address, channel: bytes) -> None:
        if self._owner.get(channel) == address:
            self._unsettle(channel)

    def _unsettle(self, channel: bytes) -> None:
        if channel in self._wanted:
            self._unsettled.add(channel)
            self._wake.set()
            self._report()

    def _report(self) -> None:
        """Tell the bus's `on_state` when `connected` changes."""
        now = self.connected
        if now != self._reported and not self._closing:
            self._reported = now
            self._on_state(now)

    def _settled(self) -> bool:
        return self.connected

    # --- following the slot map -------------------------------------------------

    async def _follow(self) -> None:
        """Read the slot map and move channels to their slots' masters until everything is confirmed."""
        failures = 0
        while True:
            self._wake.clear()
            if self._settled():
                failures = 0
                await self._wake.wait()
                continue
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.cluster.nodes_manager.initialize()
                self._map_known = True
                await self._settle()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("bus: following the cluster's slot map: %s", str(exc) or type(exc).__name__)
            self._report()
            if not self._settled():
                await asyncio.sleep(self.backoff.delay_s(failures))
                failures += 1

    async def _settle(self) -> None:
        """(Re)subscribe every unsettled or moved channel on its slot's master, then ask those shards to resync.

        A shard's resync PONG (`_on_shard_state`) settles the channels placed on
        it; a shard still connecting re-subscribes them and resyncs by itself.
        """
        touched: set[Address] = set()
        for channel in sorted(self._wanted):
            owner = self._owner_now(channel)
            if owner is None:
                self._unsettled.add(channel)
                continue
            if channel in self._unsettled or self._owner.get(channel) != owner:
                self._unsettled.add(channel)
                self._place(channel, owner)
                self._placing.setdefault(owner, set()).add(channel)
                touched.add(owner)
        for address in touched:
            self.shards[address].resync()
        for address in [address for address, shard in self.shards.items() if not shard.channels]:
            shard = self.shards.pop(address)
            self._up.discard(address)
            self._placing.pop(address, None)
            log.info("bus: shard subscriber on %s:%d let go (no channel left)", *address)
            await shard.close()

    def _release_all(self) -> None:
        for futures in self._settle_waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._settle_waiters.clear()


class RedisClusterBus(RedisBus):
    """RedisBus on a Redis Cluster: sharded channels, SPUBLISH, one subscriber per owning master."""

    publish_command = "SPUBLISH"
    max_publishes_per_script = 1  # every key of one script must be in one slot

    def __init__(self, settings: RedisBusSettings) -> None:
        target = parse_url(settings.url) if isinstance(settings.url, str) else settings.url
        if not target.cluster:
            raise ValueError(f"--bus redis-cluster needs a redis+cluster:// URL, got {target.redacted}")
        super().__init__(settings)  # its client is a RedisCluster (common/redis_connect.py) for this URL
        self._subscriber = ShardedSubscriber(  # replaces the single-server subscriber (never started)
            target, self._client,
            timeout_s=settings.timeout_s,
            backoff=BackoffPolicy(
                base_s=settings.reconnect_base_s, factor=2.0, cap_s=settings.reconnect_cap_s, jitter=RECONNECT_JITTER
            ),
            on_message=self._on_channel_message,
            on_state=lambda connected: self._on_state(connected),
        )
        # redis-py's cluster client fails a command at once past `max_connections` per master
        # instead of waiting: history reads wait here for their turn (the publish pipeline and
        # the slot-map reads keep one connection each).
        self._reads = asyncio.Semaphore(max(1, settings.max_connections - 2))
        self._queue: list[tuple[str, bytes, str | None, asyncio.Future, list[bool]]] = []
        self._queue_flusher: asyncio.Task | None = None

    async def close(self) -> None:
        await self._subscriber.close()
        if self._queue_flusher is not None:
            self._queue_flusher.cancel()
        for _, _, _, future, _ in self._queue:
            if not future.done():
                future.set_exception(BusUnavailable("bus closed"))
        self._queue.clear()
        await self._client.aclose()
        # aclose() skips a client that has not run a command since its last error, but the slot-map
        # reads (ShardedSubscriber) may have opened connections on its nodes: close those too.
        await self._client.nodes_manager.aclose()
        await self._client.nodes_manager.aclose("startup_nodes")

    @property
    def sharded(self) -> ShardedSubscriber:
        """The per-shard subscriber connections (for tests)."""
        return self._subscriber

    # --- names ----------------------------------------------------------------

    def channel(self, room: str) -> str:
        return f"{self.settings.channel_prefix}{{{room}}}"

    def _room_of_channel(self, channel: bytes) -> str:
        text = channel.decode()
        tagged = text[len(self.settings.channel_prefix):]
        if not (text.startswith(self.settings.channel_prefix) and tagged.startswith("{") and tagged.endswith("}")):
            raise ValueError(f"not a room's shard channel: {channel!r}")
        return tagged[1:-1]

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(self._room_of_channel(channel) for channel in self._subscriber.channels)

    def _room_message(self, channel: bytes, body: bytes) -> tuple[str, bytes]:
        return self._room_of_channel(channel), body

    # --- history ----------------------------------------------------------------

    async def read_history(self, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await self._reads.acquire()
        except TimeoutError:
            raise BusUnavailable(f"no Redis connection free within {self.settings.timeout_s}s") from None
        try:
            return await super().read_history(room, since_seq, since_epoch, limit)
        finally:
            self._reads.release()

    # --- publish ----------------------------------------------------------------

    async def publish(self, room: str, body: bytes, idempotency_key: str | None = None) -> Position:
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            raise ValueError("an idempotency key is 1..64 printable ASCII characters")
        future = asyncio.get_running_loop().create_future()
        sent = [False]  # handed to Redis: from then on a failure leaves the outcome unknown
        self._queue.append((room, body, idempotency_key, future, sent))
        if self._queue_flusher is None or self._queue_flusher.done():
            self._queue_flusher = asyncio.create_task(self._flush_queue(), name="bus-cluster-publisher")
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            future.cancel()  # a batch not yet sent skips it
            if sent[0]:
                raise PublishUnconfirmed(f"Redis did not confirm within {self.settings.timeout_s}s") from None
            raise BusUnavailable(f"Redis did not answer within {self.settings.timeout_s}s") from None

    def _script_args(self, room: str, body: bytes, idempotency_key: str | None) -> list:
        """node/bus_redis.py's publish script for one publish (its keys are one slot's): numkeys,
        KEYS, then ARGV: 1 (publishes in this script) and that publish's values."""
        keys, args = self.publish_keys_and_args(room, body, idempotency_key)
        return [len(keys), *keys, 1, *args]

    async def _run_scripts(self, calls: list[list], by_sha: bool) -> list:
        """One cluster pipeline of publish scripts (each master's in order); per call its reply or its error."""
        pipe = self._client.pipeline()
        for args in calls:
            if by_sha:  # (redis-py's cluster pipeline refuses its evalsha() helper, not the command)
                pipe.execute_command("EVALSHA", self._publish_sha, *args)
            else:
                pipe.execute_command("EVAL", self.publish_script, *args)
        return await pipe.execute(raise_on_error=False)

    async def _flush_queue(self) -> None:
        """One cluster pipeline after another, each with the publishes queued meanwhile, in call order."""
        while self._queue:
            batch = [item for item in self._queue[:MAX_PIPELINE_COMMANDS] if not item[3].done()]
            del self._queue[:MAX_PIPELINE_COMMANDS]
            if not batch:
                continue
            for item in batch:
                item[4][0] = True
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    results = await self._run_scripts([self._script_args(*item[:3]) for item in batch], by_sha=True)
                    # A master without the script (new, or a promoted replica: scripts are not
                    # replicated) refused all of its publishes: they run again, in order, with EVAL.
                    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
                    if missing:
                        again = await self._run_scripts([self._script_args(*batch[i][:3]) for i in missing], by_sha=False)
                        for i, result in zip(missing, again):
                            results[i] = result
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("publish batch of %d failed: %s", len(batch), exc)
                # A refused connection published nothing; a timeout or a connection lost
                # mid-way may have published some of the batch.
                never_sent = isinstance(exc, RedisConnectionError) and "connecting" in str(exc)
                error: Callable[[str], BusUnavailable] = BusUnavailable if never_sent else PublishUnconfirmed
                for item in batch:
                    if not item[3].done():
                        item[3].set_exception(error(f"Redis: {exc or type(exc).__name__}"))
                continue
            for item, result in zip(batch, results):
                future = item[3]
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(BusUnavailable(f"publish failed: {result}"))
                else:
                    seq, epoch, duplicate = result
                    epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
                    future.set_result(Position(int(seq), epoch_text, duplicate=bool(duplicate)))
