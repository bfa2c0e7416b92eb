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
differences, and only these:

- `channel()` is the global channel for every room, and the room travels in
  the payload: the published body is `room + " " + body` (a room name never
  contains a space), stripped again when the subscriber reads it and when
  history is read.
- The one subscription is the pseudo-room GLOBAL_SUBSCRIPTION, made (and
  re-made after a reconnect) by RedisBus' own connect; joining or leaving a
  room sends nothing to Redis, it only waits until that subscription is live.

It must not filter messages itself: the hub counts every bus message it is
handed (`ringcast_bus_messages_received_total`) before dropping rooms with no
local member, which is the cost this baseline is kept to show.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from node.bus import HistoryPage, Position
from node.bus_redis import RedisBus, RedisBusSettings

log = logging.getLogger("ringcast.bus")

GLOBAL_SUBSCRIPTION = "__global__"  # the base class's one "room": channel() maps it, like every room, to the global channel
ROOM_SEPARATOR = b" "  # outside the room name character set (node/protocol.py)


class GlobalBroadcastBus(RedisBus):
    def __init__(self, settings: RedisBusSettings) -> None:
        super().__init__(settings)
        self._rooms.add(GLOBAL_SUBSCRIPTION)  # subscribed on every (re)connect by RedisBus
        self._hosted: set[str] = set()
        self._global_channel = (settings.channel_prefix + GLOBAL_SUBSCRIPTION).encode()

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(self._hosted)

    def channel(self, room: str) -> str:
        return self.settings.channel_prefix + GLOBAL_SUBSCRIPTION

    async def publish(self, room: str, body: bytes) -> Position:
        return await super().publish(room, room.encode() + ROOM_SEPARATOR + body)

    async def read_history(self, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        page = await super().read_history(room, since_seq, since_epoch, limit)
        untagged = [replace(m, body=m.body.split(ROOM_SEPARATOR, 1)[-1]) for m in page.messages]
        return replace(page, messages=untagged)

    async def subscribe(self, room: str) -> None:
        """Nothing goes to Redis: wait only until the global subscription is confirmed."""
        self._hosted.add(room)
        in_flight = self._sent_subscribes.get(GLOBAL_SUBSCRIPTION)
        if self._live and not in_flight:
            return
        future = asyncio.get_running_loop().create_future()
        if self._live and in_flight:
            in_flight[-1].append(future)
        else:
            self._waiting_for_connection.setdefault(GLOBAL_SUBSCRIPTION, []).append(future)
        await self._await_confirmation(future)

    def unsubscribe(self, room: str) -> None:
        self._hosted.discard(room)

    def _on_subscriber_reply(self, reply: object) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message" and reply[1] == self._global_channel:
            # Rewrite it as the message of the room's own channel, which RedisBus knows how to read.
            try:
                seq, epoch, tagged = reply[2].split(b" ", 2)
                room, body = tagged.split(ROOM_SEPARATOR, 1)
            except (ValueError, AttributeError):
                log.error("bus subscriber: dropping a malformed message on the global channel")
                return
            reply = [b"message", self._prefix + room, b" ".join((seq, epoch, body))]
        super()._on_subscriber_reply(reply)
