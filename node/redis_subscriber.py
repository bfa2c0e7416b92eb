"""One Redis pub/sub connection: channels in, (channel, payload) bytes out.

Owns a dedicated subscriber connection to one Redis and how it fails:

- `subscribe(channel)` / `unsubscribe(channel)` keep the set of wanted
  channels; `until_confirmed(channel)` is a future that resolves once Redis
  has confirmed the channel's latest SUBSCRIBE (at once if nothing is in
  flight on a live connection, after the reconnect otherwise).
- `on_message(channel, payload)` is called once per PUBLISHed message, on the
  event loop thread, in channel order. It is a small asyncio protocol over
  hiredis' reply parser so that every reply in one socket read is handed on in
  one loop turn (fan-out then coalesces writes per member).
- `on_state(True)` is called once the connection is up AND every wanted
  channel is confirmed: a PING sent after the re-SUBSCRIBEs is answered after
  them (Redis answers in order). `on_state(False)` is called when a live
  connection is lost. `connected` is true from the moment the re-SUBSCRIBEs
  are sent until the connection is lost. `resync()` sends that PING on a
  live connection, for a caller that just (re)subscribed channels there.
- Liveness: a PING every `timeout_s / 2`; a connection that leaves a PING
  unanswered and sends nothing for `timeout_s` (Redis paused, partitioned) is
  lost. A lost connection is retried after `backoff` (router/backoff.py)
  delays and re-subscribes exactly the channels wanted then.
- Where to connect is asked of the `address` at every (re)connect: a fixed
  `RedisAddress`, or common/redis_connect.py's `EndpointLocator`, which asks
  the sentinels for the current master (so a failover is followed by the
  reconnect) and carries the TLS context (`rediss://`). AUTH with the
  endpoint's user and password.

- Classic or sharded pub/sub (`commands`): CLASSIC sends SUBSCRIBE and
  reads `message`; SHARDED (Redis 7 Cluster) sends SSUBSCRIBE, one channel
  per command (channels of one command must share a slot, and slots are not
  this module's), and reads `smessage`. A channel the server unsubscribes by
  itself while it is still wanted (Redis sends `sunsubscribe` when the
  channel's slot leaves the node) is reported to `on_unsubscribed(channel)`
  and stays wanted.

It must not know rooms, slots, sequence numbers, the payload format or the
hub: it is channels and bytes (node/bus_redis.py maps rooms to channels,
node/bus_cluster.py channels to shards, and node/bus_wire.py parses
payloads). It sends nothing but (S)SUBSCRIBE, (S)UNSUBSCRIBE, PING and
AUTH: commands go through another connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
import ssl
from typing import Callable, Protocol
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import RedisError

from common.redis_connect import Endpoint
from router.backoff import BackoffPolicy

log = logging.getLogger("ringcast.bus.subscriber")

RESYNC_PING = b"ringcast-resync"  # payload of the PING that marks the end of a re-subscribe
MAX_CHANNELS_PER_SUBSCRIBE = 1000  # re-subscribes after a reconnect are sent in commands of this many channels

MessageFn = Callable[[bytes, bytes], None]  # (channel, payload)
UnsubscribedFn = Callable[[bytes], None]  # a wanted channel the server unsubscribed
StateFn = Callable[[bool], None]  # True: connected and every wanted channel confirmed; False: lost


class EndpointSource(Protocol):
    """Where the subscriber connects now (asked at every (re)connect)."""

    async def endpoint(self) -> Endpoint: ...


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A fixed plain-TCP Redis (tests, and callers not yet on common/redis_connect.py)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "RedisAddress":
        """Parse `redis://[[user]:password@]host[:port][/db]`; the db is irrelevant to pub/sub. Raises ValueError."""
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", ""):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r} (use redis://HOST:PORT/DB)")
        return cls(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 6379,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )

    async def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, None, self.username, self.password)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PubSubCommands:
    """The commands and reply kinds of one pub/sub flavour."""

    subscribe: bytes
    unsubscribe: bytes
    message: bytes  # reply kind of a published message
    subscribed: bytes  # reply kind confirming a subscription
    unsubscribed: bytes  # reply kind of an unsubscription (asked, or by the server)
    channels_per_command: int  # channels in one re-subscribe command after a reconnect


CLASSIC = PubSubCommands(b"SUBSCRIBE", b"UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe",
                         MAX_CHANNELS_PER_SUBSCRIBE)
SHARDED = PubSubCommands(b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe", 1)


def encode_command(*args: str | bytes) -> bytes:
    """One RESP array command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    """Feeds socket bytes to hiredis and hands each complete reply on."""

    def __init__(self, subscriber: "RedisSubscriber") -> None:
        self.subscriber = subscriber
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()  # asked once: get_running_loop() costs a getpid() call

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        subscriber = self.subscriber
        subscriber._last_rx = self.loop.time()  # any byte from Redis proves it alive
        self.reader.feed(data)
        on_reply = subscriber._on_reply
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            on_reply(reply)
            if self.transport is not None and self.transport.is_closing():
                return  # closed on an error reply: nothing after it is handed on

    def connection_lost(self, exc: Exception | None) -> None:
        self.subscriber._on_connection_lost(self)


class RedisSubscriber:
    """The subscriber connection; `start()` it, then subscribe channels at any time."""

    def __init__(
        self,
        address: EndpointSource,  # a RedisAddress, or common.redis_connect.EndpointLocator (TLS, Sentinel)
        *,
        timeout_s: float,  # connect timeout; also the silence after an unanswered PING that counts as lost
        backoff: BackoffPolicy,  # delays between reconnect attempts
        on_message: MessageFn,
        on_state: StateFn = lambda connected: None,
        commands: PubSubCommands = CLASSIC,
        on_unsubscribed: UnsubscribedFn = lambda channel: None,
    ) -> None:
        self.address = address
        self.commands = commands
        self._on_unsubscribed = on_unsubscribed
        self._unsubscribes_sent: collections.Counter[bytes] = collections.Counter()  # asked, reply not yet read
        self.timeout_s = timeout_s
        self.backoff = backoff
        self._on_message = on_message
        self._on_state = on_state
        self._wanted: set[bytes] = set()
        self._protocol: _Protocol | None = None
        self._live = False  # connected and re-subscribes sent
        # per channel: one entry per SUBSCRIBE sent on the live connection, each with its waiters
        self._in_flight: dict[bytes, collections.deque[list[asyncio.Future]]] = {}
        self._awaiting_connection: dict[bytes, list[asyncio.Future]] = {}
        self._pong_due: float | None = None
        self._last_rx = 0.0  # loop time of the last byte read
        self._runner: asyncio.Task | None = None
        self._closing = False
        self._lost = asyncio.Event()
        self._target = str(address)  # host:port of the (last) connection attempt, for logs (never a password)

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, and keep reconnecting until `close()`."""
        self._runner = asyncio.create_task(self._run(), name="bus-subscriber")

    async def close(self) -> None:
        """Stop reconnecting and drop the connection (no `on_state(False)`)."""
        self._closing = True
        if self._runner:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        if self._protocol and self._protocol.transport:
            self._protocol.transport.close()
        close_address = getattr(self.address, "close", None)
        if close_address is not None:
            await close_address()  # the sentinel connections of an EndpointLocator

    @property
    def connected(self) -> bool:
        return self._live

    @property
    def channels(self) -> frozenset[bytes]:
        """The channels wanted (subscribed, or to be on the next connection)."""
        return frozenset(self._wanted)

    # --- channels ---------------------------------------------------------------

    def subscribe(self, channel: bytes) -> None:
        """Want `channel`: SUBSCRIBE now if connected, else on the next connection."""
        self._wanted.add(channel)
        if self._live and self._protocol and self._protocol.transport:
            self._in_flight.setdefault(channel, collections.deque()).append([])
            self._protocol.transport.write(encode_command(self.commands.subscribe, channel))

    def unsubscribe(self, channel: bytes) -> None:
        """Stop wanting `channel` (UNSUBSCRIBE now if connected); its connection waiters are released."""
        self._wanted.discard(channel)
        for future in self._awaiting_connection.pop(channel, []):
            if not future.done():
                future.set_result(None)
        if self._live and self._protocol and self._protocol.transport:
            self._unsubscribes_sent[channel] += 1
            self._protocol.transport.write(encode_command(self.commands.unsubscribe, channel))

    def resync(self) -> None:
        """On a live connection, send the resync PING now: `on_state(True)` follows every (S)SUBSCRIBE sent before it."""
        if self._live and self._protocol and self._protocol.transport:
            self._protocol.transport.write(encode_command("PING", RESYNC_PING))

    def until_confirmed(self, channel: bytes) -> asyncio.Future[None]:
        """A future resolved once Redis confirmed the channel's latest SUBSCRIBE.

        Done at once if the connection is live with no SUBSCRIBE of that
        channel in flight. Never fails; it also resolves if the channel is
        unsubscribed meanwhile. The caller bounds the wait (cancelling it is
        harmless).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        in_flight = self._in_flight.get(channel)
        if self._live and in_flight:
            in_flight[-1].append(future)
        elif self._live:
            future.set_result(None)
        else:
            self._awaiting_connection.setdefault(channel, []).append(future)
        return future

    # --- connection -------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                await self._connect(loop)
                failures = 0
                await self._watch(loop)
            except ssl.SSLError as exc:  # before OSError, its base: say it is TLS (wrong CA, name, client cert)
                if not self._closing:
                    log.error("bus subscriber: TLS with Redis %s failed: %s", self._target, exc)
            except (OSError, TimeoutError, ConnectionError, RuntimeError, RedisError) as exc:
                if not self._closing:
                    log.warning("bus subscriber: %s", str(exc) or type(exc).__name__)  # a timeout has no text
            self._drop()
            if self._closing:
                return
            await asyncio.sleep(self.backoff.delay_s(failures))
            failures += 1

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        self._target = str(self.address)
        async with asyncio.timeout(self.timeout_s):
            address = await self.address.endpoint()  # Sentinel: the master now, after any failover
            self._target = f"{address.host}:{address.port}"
            transport, protocol = await loop.create_connection(
                lambda: _Protocol(self), address.host, address.port,
                ssl=address.ssl, server_hostname=address.host if address.ssl is not None else None,
            )
        self._protocol = protocol  # type: ignore[assignment]
        self._lost = asyncio.Event()
        if address.password is not None:
            auth = ("AUTH", address.username, address.password) if address.username else ("AUTH", address.password)
            transport.write(encode_command(*auth))  # its reply ("OK" or an error) is read by _on_reply
        # Re-subscribe the channels wanted now; every waiter (old or new) rides on this one SUBSCRIBE.
        self._in_flight = {}
        channels = sorted(self._wanted)
        for channel in channels:
            waiters = self._awaiting_connection.pop(channel, [])
            self._in_flight[channel] = collections.deque([waiters])
        for futures in self._awaiting_connection.values():  # channels unsubscribed meanwhile
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._awaiting_connection = {}
        self._unsubscribes_sent.clear()
        step = self.commands.channels_per_command
        commands = [encode_command(self.commands.subscribe, *channels[start:start + step])
                    for start in range(0, len(channels), step)]
        # Redis answers in order: this PONG comes after every SUBSCRIBE above is
        # confirmed, so only then is the state "resynced" (the hub's gap fill relies on it).
        # One write, so Redis usually reads them together; messages it sends between a
        # SUBSCRIBE and the PONG still reach the hub, which fills any gap they open.
        commands.append(encode_command("PING", RESYNC_PING))
        transport.write(b"".join(commands))
        self._pong_due = None
        self._live = True
        log.info("bus subscriber connected to %s:%d, re-subscribing %d channels", address.host, address.port, len(channels))

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping the connection; a silent Redis (paused, partitioned) is a lost one."""
        interval = self.timeout_s / 2
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
                if self._pong_due is not None and loop.time() > self._pong_due and silent_s > self.timeout_s:
                    raise TimeoutError(f"Redis did not answer a ping within {self.timeout_s}s")
            now = loop.time()
            if self._pong_due is None and self._protocol and self._protocol.transport:
                self._pong_due = now + self.timeout_s
                self._protocol.transport.write(encode_command("PING"))

    def _drop(self) -> None:
        was_live = self._live
        self._live = False
        protocol, self._protocol = self._protocol, None
        if protocol and protocol.transport:
            protocol.transport.abort()
        # SUBSCRIBEs in flight are lost with the connection; their waiters wait for the re-subscribe.
        for channel, entries in self._in_flight.items():
            if channel in self._wanted:
                bucket = self._awaiting_connection.setdefault(channel, [])
                for waiters in entries:
                    bucket.extend(waiters)
            else:
                for waiters in entries:
                    for future in waiters:
                        if not future.done():
                            future.set_result(None)
        self._in_flight = {}
        if was_live:
            log.warning("bus subscriber lost; %d channels to re-subscribe", len(self._wanted))
            self._on_state(False)

    def _on_connection_lost(self, protocol: _Protocol) -> None:
        if protocol is self._protocol:
            self._lost.set()

    # --- replies ----------------------------------------------------------------

    def _on_pong(self, payload: bytes) -> None:
        if payload == RESYNC_PING:
            self._on_state(True)  # every SUBSCRIBE sent before it is confirmed
        else:
            self._pong_due = None

    def _on_confirmed(self, channel: bytes) -> None:
        entries = self._in_flight.get(channel)
        if entries:
            for future in entries.popleft():
                if not future.done():
                    future.set_result(None)
            if not entries:
                del self._in_flight[channel]

    def _on_unsubscribe_reply(self, channel: bytes) -> None:
        if self._unsubscribes_sent[channel] > 0:
            self._unsubscribes_sent[channel] -= 1
            if not self._unsubscribes_sent[channel]:
                del self._unsubscribes_sent[channel]
            return
        if channel in self._wanted:  # the server dropped it (its slot moved): the owner of the channel decides
            log.warning("bus subscriber: %s unsubscribed %r by itself", self._target, channel)
            try:
                self._on_unsubscribed(channel)
            except Exception:
                log.exception("bug in the unsubscribed callback for channel %r", channel)

    def _on_reply(self, reply: object) -> None:
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == self.commands.message:
                if len(reply) != 3:
                    log.error("bus subscriber: dropping a message reply of %d elements", len(reply))
                    return
                try:
                    self._on_message(reply[1], reply[2])
                except Exception:
                    log.exception("bug in the message callback for channel %r; message dropped", reply[1])
                return
            if kind == self.commands.subscribed:
                self._on_confirmed(reply[1])
                return
            if kind == b"pong":
                self._on_pong(reply[1])
                return
            if kind == self.commands.unsubscribed:
                self._on_unsubscribe_reply(reply[1])
                return
        if reply == b"PONG" or reply == RESYNC_PING:
            # With no channel subscribed the connection is in normal mode, where Redis
            # answers PING with +PONG and PING <payload> with the bare payload.
            self._on_pong(b"" if reply == b"PONG" else reply)
            return
        if isinstance(reply, hiredis.ReplyError):
            log.error("bus subscriber: Redis error %s", reply)
            if self._protocol and self._protocol.transport:
                self._protocol.transport.close()
            return
        # "OK" from AUTH and anything else harmless
