"""The worker's local index of rooms and members, and fan-out.

Owns which local connections are in which room, and the rule that keeps bus
subscriptions minimal: the first local member of a room subscribes the
worker to its channel, the last one leaving unsubscribes it. A member is
added only once the subscription is live, so `joined` is never preceded by a
message and never followed by a gap. Fan-out encodes each bus message once
per wire format and queues the same bytes for every member.

It must not parse client frames or talk to Redis directly (the bus does).
"""

from __future__ import annotations

import asyncio
import logging
from node import envelope as envelope_codec
from node import frames, protocol
from node.bus import Bus, BusMessage
from node.connection import Connection
from node.metrics import NodeMetrics
from node.outbox import Outbox

log = logging.getLogger("ringcast.hub")


class _Room:
    __slots__ = ("members", "joining", "ready")

    def __init__(self) -> None:
        self.members: set[Connection] = set()
        self.joining = 0  # joins waiting for the subscription
        self.ready: asyncio.Future | None = None  # the subscription in progress, None once live


class Hub:
    def __init__(self, bus: Bus, outbox: Outbox, metrics: NodeMetrics) -> None:
        self.bus = bus
        self.outbox = outbox
        self.metrics = metrics
        self.rooms: dict[str, _Room] = {}

    async def join(self, conn: Connection, room: str) -> None:
        """Add `conn` to `room`, subscribing first if needed. Raises BusUnavailable."""
        entry = self.rooms.get(room)
        if entry is None:
            entry = self.rooms[room] = _Room()
            entry.ready = asyncio.ensure_future(self.bus.subscribe(room))
            self.metrics.rooms_hosted.set(len(self.rooms))
        ready = entry.ready
        if ready is not None:  # members is empty until the subscription is live
            entry.joining += 1
            try:
                await asyncio.shield(ready)
            except BaseException:
                entry.joining -= 1
                self._drop_if_empty(room, entry)
                raise
            entry.joining -= 1
            entry.ready = None
            if conn.closed:  # it went away while we waited
                self._drop_if_empty(room, entry)
                return
        entry.members.add(conn)
        conn.rooms.add(room)

    def leave(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        entry = self.rooms.get(room)
        if entry is None:
            return
        entry.members.discard(conn)
        self._drop_if_empty(room, entry)

    def leave_all(self, conn: Connection) -> None:
        for room in list(conn.rooms):
            self.leave(conn, room)

    def _drop_if_empty(self, room: str, entry: _Room) -> None:
        if entry.members or entry.joining:
            return
        if self.rooms.get(room) is entry:
            del self.rooms[room]
            self.bus.unsubscribe(room)
            self.metrics.rooms_hosted.set(len(self.rooms))

    def deliver(self, message: BusMessage) -> None:
        """Fan one bus message out to the room's local members (called by the bus)."""
        self.metrics.bus_messages_received.inc()
        entry = self.rooms.get(message.room)
        if entry is None or not entry.members:
            return
        try:
            env = envelope_codec.unpack(message.body)
        except ValueError:
            log.error("dropping undecodable bus message in room %s seq %d", message.room, message.seq)
            return
        body = protocol.message(
            message.room, message.seq, message.epoch, env.ts_ms, env.sender, env.data_key, env.data
        )
        json_frame: bytes | None = None
        msgpack_frame: bytes | None = None
        push = self.outbox.push
        for conn in entry.members:
            if conn.binary:
                if msgpack_frame is None:
                    msgpack_frame = frames.data_frame(protocol.encode(body, protocol.MSGPACK), True)
                push(conn, msgpack_frame)
            else:
                if json_frame is None:
                    json_frame = frames.data_frame(protocol.encode(body, protocol.JSON), False)
                push(conn, json_frame)
        self.metrics.messages_delivered.inc(len(entry.members))
