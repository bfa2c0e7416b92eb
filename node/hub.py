"""The worker's local index of rooms and members, and fan-out.

Owns which local connections are in which room, and the rule that keeps bus
subscriptions minimal: the first local member of a room subscribes the
worker to its channel, the last one leaving unsubscribes it. Fan-out encodes
each bus message once per wire format and queues the same bytes for every
member.

It also owns the seam between history and the live stream. A joiner is first
held as *recovering*: the subscription is made live, then the room's position
(and, when resuming, what the joiner missed) is read from the bus while live
messages for it are buffered. The worker sends `joined` and the history, then
calls `go_live`, which sends the buffered messages newer than the last one
sent and makes the joiner a plain member, all in one synchronous step: no
gap, no duplicate, no message before `joined`. The history read and the live
stream travel on different Redis connections, so a joiner's position can be
ahead of the room's live stream: such a member is *ahead* until the stream
passes its position, and the messages it already has are not sent to it
again. After a bus outage it fills the gap for the members it already has
from the rooms' history (`fill_gaps`, which holds every room's live messages
in the caller's own turn, before any later message can be fanned out).

It must not parse client frames or talk to Redis directly (the bus does).
"""

from __future__ import annotations

import asyncio
import logging

from node import envelope as envelope_codec
from node import frames, protocol
from node.bus import Bus, BusMessage, BusUnavailable, HistoryPage
from node.connection import Connection
from node.metrics import NodeMetrics
from node.outbox import Outbox

log = logging.getLogger("ringcast.hub")


class _Room:
    __slots__ = ("members", "joining", "ready", "recovering", "ahead", "last_seq", "last_epoch", "filling")

    def __init__(self) -> None:
        self.members: set[Connection] = set()
        self.joining = 0  # joins waiting for the subscription
        self.ready: asyncio.Future | None = None  # the subscription in progress, None once live
        self.recovering: dict[Connection, list[BusMessage]] = {}  # joiners reading history, live buffer each
        self.ahead: dict[Connection, tuple[str, int]] = {}  # members whose position the live stream has not reached
        self.last_seq = 0  # position of the last message fanned out here (or the first join's position)
        self.last_epoch: str | None = None
        self.filling: list[BusMessage] | None = None  # live messages held while a gap after a bus outage is filled


class Hub:
    def __init__(self, bus: Bus, outbox: Outbox, metrics: NodeMetrics, max_join_buffer_messages: int = 10_000) -> None:
        self.bus = bus
        self.max_join_buffer_messages = max_join_buffer_messages
        self.outbox = outbox
        self.metrics = metrics
        self.rooms: dict[str, _Room] = {}

    async def join(self, conn: Connection, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        """Hold `conn` as a recovering member of `room` and read the room's history.

        `since_seq`/`since_epoch`/`limit` are passed to Bus.read_history. The
        caller must send `joined` and the page's messages, then call
        `go_live` without awaiting in between. Raises BusUnavailable, after
        which `conn` is not in the room.
        """
        entry = self.rooms.get(room)
        if entry is None:
            entry = self.rooms[room] = _Room()
            entry.ready = asyncio.ensure_future(self.bus.subscribe(room))
            self.metrics.rooms_hosted.set(len(self.rooms))
        ready = entry.ready
        if ready is not None:  # first joiners wait for the subscription together
            entry.joining += 1
            try:
                await asyncio.shield(ready)
            except BaseException:
                entry.joining -= 1
                self._drop_if_empty(room, entry)
                raise
            entry.joining -= 1
            if entry.ready is ready:
                entry.ready = None
        if conn.closed:
            self._drop_if_empty(room, entry)
            raise ConnectionError("connection closed while joining")
        entry.recovering[conn] = []
        conn.rooms.add(room)
        try:
            return await self.bus.read_history(room, since_seq, since_epoch, limit)
        except BaseException:
            self.leave(conn, room)
            raise

    def go_live(self, conn: Connection, room: str, epoch: str, last_sent_seq: int) -> None:
        """Send what arrived live during the history read after (epoch, last_sent_seq); join the fan-out."""
        entry = self.rooms.get(room)
        buffered = entry.recovering.pop(conn, None) if entry is not None else None
        if buffered is None:  # it left (or was cut off) during the history read
            return
        if entry.last_epoch is None:
            entry.last_epoch, entry.last_seq = epoch, last_sent_seq
        for message in buffered:
            if message.epoch != epoch or message.seq > last_sent_seq:
                frame = self.message_frame(message, conn.binary)
                if frame is not None:
                    self.outbox.push(conn, frame)
                last_sent_seq = message.seq if message.epoch == epoch else last_sent_seq
        if epoch != entry.last_epoch or last_sent_seq > entry.last_seq:
            entry.ahead[conn] = (epoch, last_sent_seq)  # live messages up to there are already its own
        entry.members.add(conn)

    def leave(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        entry = self.rooms.get(room)
        if entry is None:
            return
        entry.members.discard(conn)
        entry.recovering.pop(conn, None)
        entry.ahead.pop(conn, None)
        self._drop_if_empty(room, entry)

    def leave_all(self, conn: Connection) -> None:
        for room in list(conn.rooms):
            self.leave(conn, room)

    def _drop_if_empty(self, room: str, entry: _Room) -> None:
        if entry.members or entry.joining or entry.recovering:
            return
        if self.rooms.get(room) is entry:
            del self.rooms[room]
            self.bus.unsubscribe(room)
            self.metrics.rooms_hosted.set(len(self.rooms))

    @staticmethod
    def message_body(message: BusMessage) -> dict | None:
        """One bus message as a `message` server frame (None if undecodable)."""
        try:
            env = envelope_codec.unpack(message.body)
        except ValueError:
            log.error("dropping undecodable bus message in room %s seq %d", message.room, message.seq)
            return None
        return protocol.message(message.room, message.seq, message.epoch, env.ts_ms, env.sender, env.data_key, env.data)

    def message_frame(self, message: BusMessage, binary: bool) -> bytes | None:
        """One bus message as a finished `message` frame for one codec (None if undecodable)."""
        body = self.message_body(message)
        if body is None:
            return None
        codec = protocol.MSGPACK if binary else protocol.JSON
        return frames.data_frame(protocol.encode(body, codec), binary)

    def deliver(self, message: BusMessage) -> None:
        """Fan one bus message out to the room's local members (called by the bus)."""
        self.metrics.bus_messages_received.inc()
        entry = self.rooms.get(message.room)
        if entry is None:
            return
        if entry.filling is not None:
            entry.filling.append(message)
            return
        self._fan_out(entry, message)

    def _fan_out(self, entry: _Room, message: BusMessage) -> None:
        if message.epoch == entry.last_epoch and message.seq <= entry.last_seq:
            return  # already delivered here (a gap fill overlapping the live stream)
        entry.last_epoch, entry.last_seq = message.epoch, message.seq
        if entry.recovering:
            self._buffer_for_recovering(entry, message)
        if not entry.members:
            return
        skip = self._already_had(entry, message) if entry.ahead else ()
        json_frame: bytes | None = None
        msgpack_frame: bytes | None = None
        push = self.outbox.push
        for conn in entry.members:
            if skip and conn in skip:
                continue
            if conn.binary:
                if msgpack_frame is None:
                    msgpack_frame = self.message_frame(message, True)
                    if msgpack_frame is None:
                        return
                push(conn, msgpack_frame)
            else:
                if json_frame is None:
                    json_frame = self.message_frame(message, False)
                    if json_frame is None:
                        return
                push(conn, json_frame)
        self.metrics.messages_delivered.inc(len(entry.members) - len(skip))

    @staticmethod
    def _already_had(entry: _Room, message: BusMessage) -> set[Connection]:
        """Members that got `message` from their history page already; forget those the stream has passed."""
        had = set()
        for conn, (epoch, seq) in list(entry.ahead.items()):
            if message.epoch == epoch and message.seq <= seq:
                had.add(conn)
            if message.epoch != epoch or message.seq >= seq:
                del entry.ahead[conn]  # from the next message on, a plain member
        return had

    def fill_gaps(self, limit: int) -> asyncio.Future:
        """After the bus reconnects: deliver what members missed while it was down.

        Messages published while the worker's subscription was gone are in
        the rooms' history. Each hosted room holds its live messages at once,
        in the caller's turn (the bus may deliver the next live message in
        the same socket read as its reconnect: it must be held, or it would
        move the room's position past the gap). Then, in the returned future,
        each room reads the history after the last position it delivered, fans
        out what is new, and releases what it held, in order and without
        duplicates (past `limit` missed messages, members see a jump in `seq`).
        """
        filling = [(room, entry) for room, entry in self.rooms.items()
                   if entry.members and entry.last_epoch is not None and entry.filling is None]
        for _, entry in filling:
            entry.filling = []
        return asyncio.ensure_future(asyncio.gather(*(self._fill(room, entry, limit) for room, entry in filling)))

    async def _fill(self, room: str, entry: _Room, limit: int) -> None:
        missed: list[BusMessage] = []
        try:
            page = await self.bus.read_history(room, entry.last_seq, entry.last_epoch or "", limit)
            missed = page.messages
        except BusUnavailable:
            log.warning("could not read history of %s to fill the gap of a bus outage", room)
        held, entry.filling = entry.filling or [], None
        if self.rooms.get(room) is not entry:
            return
        if missed:
            self.metrics.gap_filled_messages.inc(len(missed))
        for message in (*missed, *held):
            self._fan_out(entry, message)

    def _buffer_for_recovering(self, entry: _Room, message: BusMessage) -> None:
        cut = []
        for conn, buffered in entry.recovering.items():
            if len(buffered) >= self.max_join_buffer_messages:
                conn.close_reason = "join_buffer_overflow"
                conn.closed = True
                conn.transport.abort()  # it resumes from its last position on reconnect
                cut.append(conn)
                continue
            buffered.append(message)
        for conn in cut:  # no longer joining: go_live finds nothing, its handler's leave_all drops the room
            del entry.recovering[conn]
