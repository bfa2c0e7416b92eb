"""The global-broadcast bus: the tutorial's design, kept only as a comparison baseline.

Every room publishes to ONE Redis channel and every worker subscribes to that
one channel, whatever rooms it hosts; the hub then drops what no local member
wants ("filter locally"). So every worker receives every message of the whole
cluster. It exists so `ringcast bench --node-arg=--bus=global` can measure that
design against the per-room channels of node/bus_redis.py on the same machine
and load (docs/benchmarks.md, "Ring placement vs global broadcast"). It must
not be used in production.

Everything else is RedisBus: the same publish script (sequence, epoch,
history), the same subscriber connection, reconnects and liveness pings. The
differences, and only these, made through the hooks RedisBus offers
subclasses (`channel()`, `_room_message()`, `subscriber`,
`_await_confirmation()`):

- `channel()` is the global channel for every room, and the room travels in
  the payload: the published body is `room + " " + body` (a room name never
  contains a space), stripped again when the subscriber reads it
  (`_room_message`) and when history is read.
- The one subscription is the global channel, wanted from construction on, so
  the subscriber makes it (and re-makes it after a reconnect) by itself;
  joining or leaving a room sends nothing to Redis, it only waits until that
  subscription is confirmed.

It must not filter messages itself: the hub counts every bus message it is
handed (`ringcast_bus_messages_received_total`) before dropping rooms with no
local member, which is the cost this baseline is kept to show.
"""

from __future__ import annotations

from dataclasses import replace

from node.bus import HistoryPage, Position
from node.bus_redis import RedisBus, RedisBusSettings

GLOBAL_SUBSCRIPTION = "__global__"  # the pseudo-room whose channel carries every room
ROOM_SEPARATOR = b" "  # outside the room name character set (node/protocol.py)


class GlobalBroadcastBus(RedisBus):
    def __init__(self, settings: RedisBusSettings) -> None:
        super().__init__(settings)
        self._hosted: set[str] = set()
        self._global_channel = self.channel(GLOBAL_SUBSCRIPTION).encode()
        self.subscriber.subscribe(self._global_channel)  # made on every (re)connect by the subscriber

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(self._hosted)

    def channel(self, room: str) -> str:
        return self.settings.channel_prefix + GLOBAL_SUBSCRIPTION

    async def publish(self, room: str, body: bytes, idempotency_key: str | None = None) -> Position:
        return await super().publish(room, room.encode() + ROOM_SEPARATOR + body, idempotency_key)

    async def read_history(self, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        page = await super().read_history(room, since_seq, since_epoch, limit)
        untagged = [m._replace(body=m.body.split(ROOM_SEPARATOR, 1)[-1]) for m in page.messages]
        return replace(page, messages=untagged)

    async def subscribe(self, room: str) -> None:
        """Nothing goes to Redis: wait only until the global subscription is confirmed."""
        self._hosted.add(room)
        confirmed = self.subscriber.until_confirmed(self._global_channel)
        if not confirmed.done():
            await self._await_confirmation(confirmed)

    def unsubscribe(self, room: str) -> None:
        self._hosted.discard(room)

    def _room_message(self, channel: bytes, body: bytes) -> tuple[str, bytes]:
        if channel != self._global_channel:
            raise ValueError(f"not the global channel {self._global_channel!r}")
        room, separator, untagged = body.partition(ROOM_SEPARATOR)
        if not separator:
            raise ValueError("no room tag in a message on the global channel")
        return room.decode(), untagged
