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
in the caller's own turn, before any later message can be fanned out); a
jump in `seq` on the live stream starts the same fill for its room, and so
does a message of another epoch that is not that epoch's first (the fill
reads the new epoch from its start). What
cannot be filled, and every change of a room's epoch, is announced to the
members at its place in the stream (an unasked `joined` with `recovered:
false`): a member never loses a message without being told.

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
from router.backoff import BackoffPolicy

log = logging.getLogger("ringcast.hub")


class _Room:
    __slots__ = ("members", "joining", "ready", "recovering", "ahead", "last_seq", "last_epoch", "filling",
                 "fill_task", "refill", "gap_reason")

    def __init__(self) -> None:
        self.members: set[Connection] = set()
        self.joining = 0  # joins waiting for the subscription
        self.ready: asyncio.Future | None = None  # the subscription in progress, None once live
        self.recovering: dict[Connection, list[BusMessage]] = {}  # joiners reading history, live buffer each
        self.ahead: dict[Connection, tuple[str, int]] = {}  # members whose position the live stream has not reached
        self.last_seq = 0  # position of the last message fanned out here (or the first join's position)
        self.last_epoch: str | None = None
        self.filling: list[BusMessage] | None = None  # live messages held while a gap is filled from history
        self.fill_task: asyncio.Future | None = None  # the gap fill in progress
        self.refill = False  # the bus reconnected again during the fill: read the history once more
        self.gap_reason: str | None = None  # a gap a fill could not close: announced if the next message jumps


FILL_ATTEMPTS = 5  # history reads a gap fill tries before it announces the gap instead
FILL_BACKOFF = BackoffPolicy(base_s=0.1, factor=2.0, cap_s=2.0, jitter=0.5)  # waits between them: 0.05-1.5 s in all


class Hub:
    def __init__(
        self, bus: Bus, outbox: Outbox, metrics: NodeMetrics, max_join_buffer_messages: int = 10_000,
        max_fill_messages: int = 100, fill_attempts: int = FILL_ATTEMPTS, fill_backoff: BackoffPolicy = FILL_BACKOFF,
    ) -> None:
        """`max_join_buffer_messages` also bounds the live messages a gap fill holds (past it the fill gives
        up and announces the gap); `max_fill_messages` is the most messages one fill delivers (pass
        max_history_page), more missed are announced as `too_many_missed`."""
        self.bus = bus
        self.max_join_buffer_messages = max_join_buffer_messages
        self.max_fill_messages = max_fill_messages
        self.fill_attempts = fill_attempts
        self.fill_backoff = fill_backoff
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

    @staticmethod
    def message_frame(message: BusMessage, binary: bool) -> bytes | None:
        """One bus message as a finished `message` frame for one codec (None if undecodable)."""
        body = Hub.message_body(message)
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
            if len(entry.filling) > self.max_join_buffer_messages and entry.fill_task is not None:
                entry.fill_task.cancel()  # the fill gives up: it reports the gap and releases what it held
            return
        self._fan_out(message.room, entry, message)

    def _fan_out(self, room: str, entry: _Room, message: BusMessage, may_fill: bool = True) -> None:
        if entry.last_epoch is not None and entry.members:
            other_stream = message.epoch != entry.last_epoch
            if not other_stream:
                if message.seq <= entry.last_seq:
                    return  # already delivered here (a gap fill overlapping the live stream)
                gap = message.seq > entry.last_seq + 1  # a gap in the live stream
            else:  # another stream: its first messages are missing here unless this is its first
                gap = message.seq > 1
            if gap:
                keeps_history = self.bus.history_policy(room).size > 0
                if may_fill and entry.gap_reason is None and keeps_history:
                    # The fill reads after the room's position; in another epoch, from that epoch's start.
                    self._start_fill(room, entry, self.max_fill_messages, [message])
                    return
            if other_stream and entry.last_epoch:  # "": the members had no stream to end
                self._announce(room, entry, message, protocol.RECOVERY_EPOCH_CHANGED)
            elif gap:
                default = protocol.RECOVERY_HISTORY_TRUNCATED if keeps_history else protocol.RECOVERY_NO_HISTORY
                self._announce(room, entry, message, entry.gap_reason or default)
        elif message.epoch == entry.last_epoch and message.seq <= entry.last_seq:
            return
        entry.gap_reason = None
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

    def _announce(self, room: str, entry: _Room, message: BusMessage, reason: str) -> None:
        """Tell the members, right before `message`, that the stream does not continue from where they were.

        The notice is an unasked `joined` (no `id`) with `recovered: false`,
        `reason`, and the position after which the live stream goes on
        (docs/protocol.md, "Gaps the server could not fill"). A member that
        joined at or past that position already has it and is not told.
        """
        log.warning("room %s: the stream jumps from %s:%d to %s:%d (%s); members told",
                    room, entry.last_epoch, entry.last_seq, message.epoch, message.seq, reason)
        body = protocol.joined(room, message.seq - 1, message.epoch, None, False, reason)
        encoded: dict[bool, bytes] = {}
        for conn in entry.members:
            position = entry.ahead.get(conn)
            if position is not None and position[0] == message.epoch and position[1] >= message.seq - 1:
                continue
            frame = encoded.get(conn.binary)
            if frame is None:
                frame = encoded[conn.binary] = conn.frame(body)
            self.outbox.push(conn, frame)

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

    # --- gaps ---------------------------------------------------------------------------

    def fill_gaps(self, limit: int | None = None) -> asyncio.Future:
        """After the bus reconnects: deliver what members missed while it was down.

        Messages published while the worker's subscription was gone are in
        the rooms' history. Each hosted room holds its live messages at once,
        in the caller's turn (the bus may deliver the next live message in
        the same socket read as its reconnect: it must be held, or it would
        move the room's position past the gap). Then, in the returned future,
        each room reads the history after the last position it delivered
        (retrying a failed read `fill_attempts` times with `fill_backoff`),
        fans out what is new, and releases what it held, in order and
        without duplicates. A room whose fill is still running from an
        earlier reconnect reads once more when that read ends. Whatever the
        fill cannot deliver (more than `limit` missed, history trimmed or
        unreadable) is announced to the members at its place in the stream
        (`_announce`), never skipped in silence.
        """
        limit = limit or self.max_fill_messages
        fills = []
        for room, entry in self.rooms.items():
            if not entry.members or entry.last_epoch is None:
                continue
            if entry.filling is not None:
                entry.refill = True  # the read in progress may predate this outage
                if entry.fill_task is not None:
                    fills.append(entry.fill_task)
                continue
            fills.append(self._start_fill(room, entry, limit, []))
        return asyncio.ensure_future(asyncio.gather(*fills, return_exceptions=True))

    def _start_fill(self, room: str, entry: _Room, limit: int, held: list[BusMessage]) -> asyncio.Future:
        """Hold the room's live messages (starting with `held`) and fill its gap from history."""
        entry.filling = held
        entry.refill = False
        entry.fill_task = asyncio.ensure_future(self._fill(room, entry, limit))
        return entry.fill_task

    async def _fill(self, room: str, entry: _Room, limit: int) -> None:
        try:
            entry.gap_reason = await self._read_missed(room, entry, limit)
        except asyncio.CancelledError:  # only the hub cancels a fill: too much held while reading
            log.warning("room %s: gap fill abandoned with %d live messages held", room, len(entry.filling or ()))
            entry.gap_reason = protocol.RECOVERY_HISTORY_UNAVAILABLE
        except Exception:
            log.exception("bug while filling the gap of room %s", room)
            entry.gap_reason = protocol.RECOVERY_HISTORY_UNAVAILABLE
        finally:
            held, entry.filling, entry.fill_task = entry.filling or [], None, None
            if self.rooms.get(room) is entry:
                for message in held:
                    self._fan_out(room, entry, message, may_fill=False)

    async def _read_missed(self, room: str, entry: _Room, limit: int) -> str | None:
        """Deliver the kept messages after the room's position; the reason of any gap left, else None."""
        failures = 0
        reason = None
        while True:
            entry.refill = False
            try:
                page = await self.bus.read_history(room, entry.last_seq, entry.last_epoch or "", limit)
            except BusUnavailable as exc:
                failures += 1
                if failures >= self.fill_attempts:
                    log.warning("room %s: gap not filled, history unreadable %d times: %s", room, failures, exc)
                    return protocol.RECOVERY_HISTORY_UNAVAILABLE
                await asyncio.sleep(self.fill_backoff.delay_s(failures - 1))
                continue
            if self.rooms.get(room) is not entry:
                return None
            reason = self._deliver_page(room, entry, page, limit)
            if not entry.refill:
                return reason
            failures = 0

    def _deliver_page(self, room: str, entry: _Room, page: HistoryPage, limit: int) -> str | None:
        """Fan out one history page read to fill a gap; the reason of the gap left after it, if any."""
        missing = protocol.RECOVERY_HISTORY_TRUNCATED if self.bus.history_policy(room).size > 0 \
            else protocol.RECOVERY_NO_HISTORY
        if page.epoch == entry.last_epoch:
            entry.gap_reason = missing  # said only if the page's first message does not follow the position
        if page.messages:
            self.metrics.gap_filled_messages.inc(len(page.messages))
        for message in page.messages:
            self._fan_out(room, entry, message, may_fill=False)
        if entry.last_epoch == page.epoch and entry.last_seq >= page.seq:
            return None
        if not page.epoch:
            return None  # no position: the room's state is gone, its next message starts a new epoch
        return protocol.RECOVERY_TOO_MANY_MISSED if len(page.messages) >= limit else missing

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
