"""What a connection's frames do: decode one, run its command, answer it.

Owns the protocol session of every connection on a worker, between the
`welcome` and the last leave: decoding a client frame (`node.protocol`),
running its command (join with recovery of missed messages, leave, history,
publish, ping, refresh of the connection's token in place), the reply or
`error` frame each one earns, the one mapping
from bus failures to error codes (`bus_error`), and the byte bounds of what a
request may cost: a published message's size as each codec delivers it, and
the byte budget of a history or resume page. One `Sessions` object serves
every connection of the worker; what a connection remembers stays in its
`node.connection.Connection`, so a connection costs no extra object.

It must not read sockets, rate-limit frames, close connections or change the
worker's state (the worker does: `node.worker`), index rooms (the hub does)
or talk to Redis other than through the bus interface and `node.presence`
(which it tells of every join, leave and disconnect, and asks for `presence`
and `presence_stats` answers).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import typing
from typing import Awaitable

from node import envelope, protocol
from node.auth import MAX_TOKEN_CHARS, AuthError, TokenVerifier
from node.bus import LATEST, POSITION_ONLY, Bus, BusUnavailable, HistoryPage, PublishUnconfirmed
from node.config import NodeConfig
from node.client_address import limit_key
from node.connection import Connection
from node.history import recovery_outcome
from node.hub import Hub
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.placement import Placement
from node.presence import Presence, PresenceDisabled
from node.ratelimit import KeyedBuckets
from node.room_quota import RoomQuota

log = logging.getLogger("ringcast.worker")  # the worker's logger: these lines kept their name when they moved here

# How a bus failure reaches the client, most specific first (PublishUnconfirmed is a BusUnavailable).
BUS_ERROR_CODES: tuple[tuple[type[BusUnavailable], protocol.ErrorCode], ...] = (
    (PublishUnconfirmed, protocol.ErrorCode.PUBLISH_UNCONFIRMED),  # may or may not be published: do not retry blindly
    (BusUnavailable, protocol.ErrorCode.BUS_UNAVAILABLE),  # nothing happened: retry later
)


# The largest position a `message` frame can carry: a publish is measured with it, before Redis assigns the real one.
LARGEST_SEQ = protocol.MAX_SEQ
LARGEST_EPOCH = "9" * protocol.MAX_EPOCH_CHARS
# JSON bytes per msgpack byte of the same data, at most: `false` in a list (`false,`) and an escaped control
# character (`\u0001`) are 6 for 1; the rest grows less (`null,` 5, a float32 at most 24 for 5, `"` 2 for 1).
JSON_GROWTH_BOUND = 6
# A `message` frame's fields besides its room and the envelope's contents (names, type, seq, epoch), either codec.
FRAME_FIELDS_BOUND_BYTES = 256
# A history reply or a resume page fills at most this share of max_outbound_bytes, leaving the rest for
# what is queued to the same socket in the same turn (live messages), so a requester reading promptly is
# never cut as a slow consumer by its own reply.
PAGE_SHARE_OF_OUTBOUND = 0.5


def delivered_bytes(room: str, ts_ms: int, sender: str, data_key: str, data: object) -> int:
    """Payload bytes of the `message` frame a publish becomes, in its larger codec (JSON or msgpack).

    msgpack published can grow several times as JSON (a control character is
    1 byte in msgpack and 6 escaped in JSON), and JSON published can grow as
    msgpack (`1.0` is 3 bytes and 9): the bus size alone does not bound what
    members receive. Raises what the encoders raise for values a codec cannot carry.
    """
    largest = protocol.message(room, LARGEST_SEQ, LARGEST_EPOCH, ts_ms, sender, data_key, data)
    return max(len(protocol.encode(largest, protocol.JSON)), len(protocol.encode(largest, protocol.MSGPACK)))


class UndeliverableMessage(Exception):
    """A published message no member could be given: its `code` is INVALID_MESSAGE_FORMAT or MESSAGE_TOO_LARGE."""

    def __init__(self, code: protocol.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def pack_message(room: str, sender: str, data_key: str, data: object, max_message_bytes: int) -> bytes:
    """The bus body of one published message (node.envelope), within max_message_bytes on the bus and as
    delivered in either codec; raises UndeliverableMessage. Shared by WebSocket and HTTP publishes."""
    try:
        ts_ms = int(time.time() * 1000)
        body = envelope.pack(envelope.Envelope(ts_ms, sender, data_key, data))
        delivered = 0
        if len(body) * JSON_GROWTH_BOUND + FRAME_FIELDS_BOUND_BYTES + len(room) > max_message_bytes:
            # Only then can a delivered frame exceed the limit: measure it (small messages skip the encodes).
            delivered = delivered_bytes(room, ts_ms, sender, data_key, data)
    except (TypeError, ValueError, OverflowError):
        raise UndeliverableMessage(
            protocol.ErrorCode.INVALID_MESSAGE_FORMAT, "data holds a value that cannot be delivered"
        ) from None
    if max(len(body), delivered) > max_message_bytes:
        raise UndeliverableMessage(
            protocol.ErrorCode.MESSAGE_TOO_LARGE,
            f"message is {len(body)} bytes on the bus and up to {delivered} bytes as delivered; "
            f"the limit is {max_message_bytes}",
        )
    return body


def bus_error(exc: BusUnavailable, request_id: protocol.RequestId | None) -> protocol.ProtocolError:
    """The error a client gets for a bus failure while serving its request."""
    code = next(code for kind, code in BUS_ERROR_CODES if isinstance(exc, kind))
    return protocol.ProtocolError(code, str(exc), request_id)


class Sessions:
    """The protocol session of every connection on one worker."""

    def __init__(
        self, config: NodeConfig, worker_id: str, bus: Bus, hub: Hub, outbox: Outbox, metrics: NodeMetrics,
        placement: Placement,
        verifier: TokenVerifier | None = None,
        refused_upgrades: KeyedBuckets | None = None,
        presence: Presence | None = None,
    ) -> None:
        """verifier: the worker's token verifier (the one admission uses); None when auth is off.
        refused_upgrades: admission's per-address buckets of refused upgrades; a `refresh` whose token
            does not verify is charged to its address like a 401, and none is verified while it is empty.
        """
        self.config = config
        self.verifier = verifier
        self.refused_upgrades = refused_upgrades
        self.presence = presence  # None: no presence (tests that build Sessions alone)
        self.worker_id = worker_id
        self.bus = bus
        self.hub = hub
        self.outbox = outbox
        self.metrics = metrics
        self.placement = placement
        self.history_rules = config.history_rules()
        self.room_quota = RoomQuota(
            config.new_room_rate_per_s, config.new_room_burst, config.new_room_remembered, config.new_room_max_identities
        )
        self.page_budget_bytes = max(1, int(config.max_outbound_bytes * PAGE_SHARE_OF_OUTBOUND))
        self.decoder = protocol.Decoder(
            protocol.ProtocolLimits(
                max_room_name_chars=config.max_room_name_chars,
                max_json_depth=config.max_json_depth,
                max_frame_bytes=config.max_frame_bytes,
            )
        )
        # Each frame type's `messages_received` counter, looked up once.
        self._received = {
            kind: metrics.messages_received.labels(kind.__name__.lower()) for kind in typing.get_args(protocol.ClientFrame)
        }
        # Connections with publishes not yet answered: conn.id -> deque, in frame order, of
        # (bus future, (room, request id), perf_counter at hand-over) for a publish, and
        # (None, encoded error, 0.0) for a publish refused while earlier ones were in flight.
        # An entry exists only while something is in flight.
        self._in_flight: dict[str, collections.deque] = {}
        self.limits = {  # told to every client in its welcome
            "maxFrameBytes": config.max_frame_bytes,
            "maxMessageBytes": config.max_message_bytes,
            "maxRoomsPerConnection": config.max_rooms_per_connection,
            "maxRoomNameChars": config.max_room_name_chars,
            "messageRatePerS": config.message_rate_per_s,
            "messageBurst": config.message_burst,
            "heartbeatIntervalS": config.heartbeat_interval_s,
            "heartbeatTimeoutS": config.heartbeat_timeout_s,
        }

    # --- lifetime of one session ----------------------------------------------------

    def begin(self, conn: Connection) -> None:
        self.outbox.push(conn, conn.frame(protocol.welcome(conn.id, self.worker_id, self.limits)))

    def end(self, conn: Connection) -> None:
        """The socket is gone: leave every room it was in."""
        if self.presence is not None:
            for room in conn.rooms:
                self.presence.left(conn, room)
        self.hub.leave_all(conn)
        self._in_flight.pop(conn.id, None)  # their answers are dropped: the socket is gone
        if conn.identity is None:
            self.room_quota.forget(conn.id)  # a token's user keeps its quota across connections

    # --- one frame --------------------------------------------------------------------

    def handle(self, conn: Connection, data: str | bytes) -> Awaitable[None] | None:
        """Decode one client frame and run it; every failure becomes an `error` frame.

        Returns None when the frame is done, or an awaitable to finish it: the
        caller reads nothing more from the connection until it is awaited, so
        frames run one at a time in order. A publish is done once it is handed
        to the bus: up to max_publishes_in_flight of a connection's publishes
        wait for Redis at once, and their acks and errors go out in the order
        of the frames. Any other frame first waits for the connection's
        publishes to be answered, so every reply keeps its frame's order.
        """
        request_id: protocol.RequestId | None = None
        try:
            frame = self.decoder.decode(data, conn.codec)
            request_id = frame.request_id  # a client waiting for its reply gets one even when we fail
            self._received[type(frame)].inc()
            if isinstance(frame, protocol.Publish):
                self._publish(conn, frame)
                in_flight = self._in_flight.get(conn.id)
                if in_flight and len(in_flight) >= self.config.max_publishes_in_flight and not conn.closed:
                    return self._wait_below_in_flight_limit(conn)
                return None
            if conn.id in self._in_flight or not isinstance(frame, (protocol.Leave, protocol.Ping)):
                return self._run_after_publishes(conn, frame)
            self._run_at_once(conn, frame)
        except Exception as exc:
            self._failed(conn, exc, request_id)
        return None

    def _failed(self, conn: Connection, exc: Exception, request_id: protocol.RequestId | None) -> None:
        """Answer a frame that failed: with its ProtocolError's code, or INTERNAL_ERROR for a bug (logged)."""
        if isinstance(exc, protocol.ProtocolError):
            self.metrics.messages_received.labels("invalid").inc()
            self.send_error(conn, exc.code, exc.message, exc.request_id)
            return
        log.error("bug while handling a frame on connection %s", conn.id, exc_info=exc)
        self.send_error(conn, protocol.ErrorCode.INTERNAL_ERROR, "internal error; logged", request_id)

    def _run_at_once(self, conn: Connection, frame: protocol.Leave | protocol.Ping) -> None:
        if isinstance(frame, protocol.Leave):
            self._leave(conn, frame)
        else:
            self.outbox.push(conn, conn.frame(protocol.pong(int(time.time() * 1000), frame.request_id)))

    async def _wait_below_in_flight_limit(self, conn: Connection) -> None:
        while (
            (in_flight := self._in_flight.get(conn.id))
            and len(in_flight) >= self.config.max_publishes_in_flight and not conn.closed
        ):
            await asyncio.wait((in_flight[0][0],))

    async def _run_after_publishes(self, conn: Connection, frame: protocol.ClientFrame) -> None:
        """Run a frame that is not a publish once the connection's publishes are answered."""
        try:
            if conn.id in self._in_flight:
                await self._settle(conn)
            if isinstance(frame, protocol.Join):
                await self._join(conn, frame)
            elif isinstance(frame, protocol.History):
                await self._history(conn, frame)
            elif isinstance(frame, protocol.Refresh):
                await self._refresh(conn, frame)
            elif isinstance(frame, protocol.PresenceRequest):
                await self._presence(conn, frame)
            else:
                self._run_at_once(conn, frame)
        except Exception as exc:
            self._failed(conn, exc, frame.request_id)

    def send_error(
        self, conn: Connection, code: protocol.ErrorCode, text: str, request_id: protocol.RequestId | None,
        retry_after_s: float | None = None,
    ) -> None:
        """Answer with an `error` frame, after the replies of the connection's publishes still in flight."""
        self.metrics.errors.labels(code.value).inc()
        frame = conn.frame(protocol.error(code, text, request_id, retry_after_s))
        in_flight = self._in_flight.get(conn.id)
        if in_flight:
            in_flight.append((None, frame, 0.0))  # pushed by _answer once the publishes before it are answered
        else:
            self.outbox.push(conn, frame)

    # --- the commands -------------------------------------------------------------------

    async def _join(self, conn: Connection, frame: protocol.Join) -> None:
        if conn.identity is not None and not conn.identity.may_join(frame.room):
            raise protocol.ProtocolError(
                protocol.ErrorCode.FORBIDDEN, f"your token does not allow joining {frame.room}", frame.request_id
            )
        if frame.room in conn.rooms:
            raise protocol.ProtocolError(protocol.ErrorCode.ALREADY_JOINED, f"already in {frame.room}", frame.request_id)
        if len(conn.rooms) >= self.config.max_rooms_per_connection:
            raise protocol.ProtocolError(
                protocol.ErrorCode.TOO_MANY_ROOMS,
                f"at most {self.config.max_rooms_per_connection} rooms per connection",
                frame.request_id,
            )
        # Every room ever published to costs Redis memory for a while (docs/operations.md): a room new
        # to this user (without auth, this connection) costs a token of its new-room quota.
        quota_key = conn.identity.user if conn.identity is not None else conn.id
        wait_s = self.room_quota.check(quota_key, frame.room, time.monotonic())
        if wait_s:
            self.send_error(conn, protocol.ErrorCode.NEW_ROOM_RATE_EXCEEDED,
                            f"too many new rooms; retry in {wait_s:.2f}s", frame.request_id, wait_s)
            return
        since = frame.since
        since_seq, since_epoch = (POSITION_ONLY, "") if since is None else (since.seq, since.epoch)
        try:
            page = await self.hub.join(conn, frame.room, since_seq, since_epoch, self.config.max_history_page)
        except BusUnavailable as exc:
            raise bus_error(exc, frame.request_id) from None
        except ConnectionError:  # the socket went away while joining
            return
        # From here to go_live nothing awaits: joined, the missed messages, then the live stream.
        missed: list[bytes] = []  # the page's frames, within the byte budget
        kept, size = 0, 0
        for message in page.messages:
            encoded = self.hub.message_frame(message, conn.binary)
            if encoded is not None:
                if missed and size + len(encoded) > self.page_budget_bytes:
                    break  # the rest is reported as too_many_missed, and fetched with `history`
                missed.append(encoded)
                size += len(encoded)
            kept += 1
        recovered = reason = None
        if since is not None:
            recovered, reason = recovery_outcome(
                since.seq, since.epoch, page.seq, page.epoch,
                page.messages[0].seq if kept else None,
                page.messages[kept - 1].seq if kept else None,
                self.history_rules.policy_for(frame.room).size,
            )
            self.metrics.resumes.labels("recovered" if recovered else reason).inc()
        self.outbox.push(
            conn, conn.frame(protocol.joined(frame.room, page.seq, page.epoch, frame.request_id, recovered, reason))
        )
        for encoded in missed:
            self.outbox.push(conn, encoded)
        self.hub.go_live(conn, frame.room, page.epoch, page.seq)
        if self.presence is not None and frame.room in conn.rooms and not conn.closed:
            self.presence.joined(conn, frame.room)
        hint = self.placement.moved_hint(frame.room)
        if hint is not None:
            self.outbox.push(conn, conn.frame(hint))

    async def _history(self, conn: Connection, frame: protocol.History) -> None:
        if conn.identity is not None and not conn.identity.may_join(frame.room):
            raise protocol.ProtocolError(
                protocol.ErrorCode.FORBIDDEN, f"your token does not allow reading {frame.room}", frame.request_id
            )
        limit = min(frame.limit or self.config.max_history_page, self.config.max_history_page)
        since = frame.since
        since_seq, since_epoch = (LATEST, "") if since is None else (since.seq, since.epoch)
        try:
            page = await self.bus.read_history(frame.room, since_seq, since_epoch, limit)
        except BusUnavailable as exc:
            raise bus_error(exc, frame.request_id) from None
        bodies, kept = self._page_within_budget(conn, frame, page)
        if kept:
            complete = page.messages[kept - 1].seq >= page.seq
        else:
            complete = page.seq == 0 or (since is not None and since.epoch == page.epoch and since.seq >= page.seq)
        if not conn.closed:
            self.outbox.push(
                conn, conn.frame(protocol.history(frame.room, page.seq, page.epoch, bodies, complete, frame.request_id))
            )

    async def _presence(self, conn: Connection, frame: protocol.PresenceRequest) -> None:
        """Who is in a room (or how many), scoped like `history`: the token must allow joining it."""
        if conn.identity is not None and not conn.identity.may_join(frame.room):
            raise protocol.ProtocolError(
                protocol.ErrorCode.FORBIDDEN, f"your token does not allow reading {frame.room}", frame.request_id
            )
        try:
            if self.presence is None:
                raise PresenceDisabled(frame.room)
            if frame.stats:
                stats = await self.presence.stats(frame.room)
                reply = protocol.presence_stats(
                    frame.room, stats["connections"], stats["users"], stats["complete"], frame.request_id
                )
            else:
                snapshot = await self.presence.snapshot(frame.room)
                members, complete = self._members_within_budget(conn, snapshot["members"], snapshot["complete"])
                reply = protocol.presence(frame.room, members, len(members), complete, frame.request_id)
        except PresenceDisabled as exc:
            raise protocol.ProtocolError(protocol.ErrorCode.PRESENCE_DISABLED, str(exc), frame.request_id) from None
        except BusUnavailable as exc:
            raise bus_error(exc, frame.request_id) from None
        if not conn.closed:
            self.outbox.push(conn, conn.frame(reply))

    def _members_within_budget(self, conn: Connection, members: list[dict], complete: bool) -> tuple[list[dict], bool]:
        """The first `members` whose `presence` reply fits the page byte budget (like a history page)."""
        size = 256 + self.config.max_room_name_chars * 6  # the frame around the list, generously
        for kept, member in enumerate(members):
            size += len(protocol.encode(member, conn.codec)) + 1
            if kept and size > self.page_budget_bytes:
                return members[:kept], False
        return members, complete

    def _page_within_budget(
        self, conn: Connection, frame: protocol.History, page: HistoryPage
    ) -> tuple[list[dict], int]:
        """The oldest messages of `page` whose `history` reply fits the byte budget (at least one message).

        Returns their `message` bodies and how many of `page.messages` they
        stand for (undecodable ones are skipped but counted). The reply's size is
        bounded from above: its frame without messages, plus each message as
        encoded alone, plus a separator each.
        """
        empty = conn.frame(protocol.history(frame.room, page.seq, page.epoch, [], False, frame.request_id))
        size = len(empty) + 8  # the header and the list's length may grow by a few bytes with the list
        bodies: list[dict] = []
        kept = 0
        for message in page.messages:
            body = self.hub.message_body(message)
            if body is not None:
                grown = size + len(protocol.encode(body, conn.codec)) + 1
                if bodies and grown > self.page_budget_bytes:
                    break  # `complete: false`: the client asks for the rest from the last one it got
                bodies.append(body)
                size = grown
            kept += 1
        return bodies, kept

    async def _refresh(self, conn: Connection, frame: protocol.Refresh) -> None:
        """Replace the connection's identity with a new token's, keeping the socket and its rooms.

        The token is verified like one at the upgrade (same verifier, same clock rule), must name the
        same `sub`, and its `rooms` must still allow every room the connection is in; otherwise the
        connection keeps its old token (and is closed 4001 when that one expires). No frame of this
        connection runs meanwhile: the worker hands a connection's frames over one at a time.
        """
        rid = frame.request_id
        if conn.identity is None or self.verifier is None:
            raise protocol.ProtocolError(
                protocol.ErrorCode.AUTH_DISABLED, "auth is off on this worker: there is no token to refresh", rid
            )
        # Only a token that does not verify is what an upgrade would answer 401: it is charged to the
        # address's refused-upgrade budget, so a socket cannot test tokens faster than new upgrades could.
        address = limit_key(conn.ip)
        if self.refused_upgrades is not None:
            wait_s = self.refused_upgrades.wait_s(address, time.monotonic())
            if wait_s:
                self.send_error(conn, protocol.ErrorCode.RATE_LIMIT_EXCEEDED,
                                "too many refused tokens from this address", rid, wait_s)
                return
        try:
            if len(frame.token) > MAX_TOKEN_CHARS:
                raise AuthError(f"token longer than {MAX_TOKEN_CHARS} characters")
            await self.verifier.prepare(f"Bearer {frame.token}", None, time.monotonic())  # JWKS keys, if due
            identity = self.verifier.verify(frame.token, time.time())
        except AuthError as exc:
            if self.refused_upgrades is not None:
                self.refused_upgrades.take(address, time.monotonic())
            raise protocol.ProtocolError(protocol.ErrorCode.TOKEN_INVALID, str(exc), rid) from None
        if conn.closed:
            return
        if identity.user != conn.identity.user:
            raise protocol.ProtocolError(
                protocol.ErrorCode.TOKEN_SUBJECT_MISMATCH,
                "the new token's `sub` is not this connection's user; connect again to change users", rid,
            )
        lost = sorted(room for room in conn.rooms if not identity.may_join(room))
        if lost:
            raise protocol.ProtocolError(
                protocol.ErrorCode.TOKEN_SCOPE_LOST,
                f"the new token does not allow {lost[0]}, which this connection is in"
                + (f" (and {len(lost) - 1} more)" if len(lost) > 1 else "") + "; leave it first",
                rid,
            )
        conn.identity = identity  # the expiry sweep and every later scope check read the new one
        self.outbox.push(conn, conn.frame(protocol.refreshed(identity.expires_at, rid)))

    def _leave(self, conn: Connection, frame: protocol.Leave) -> None:
        if frame.room not in conn.rooms:
            raise protocol.ProtocolError(protocol.ErrorCode.NOT_JOINED, f"not in {frame.room}", frame.request_id)
        if self.presence is not None:
            self.presence.left(conn, frame.room)
        self.hub.leave(conn, frame.room)
        self.outbox.push(conn, conn.frame(protocol.left(frame.room, frame.request_id)))

    def _publish(self, conn: Connection, frame: protocol.Publish) -> None:
        """Check a publish and hand it to the bus; its ack (or error) is pushed by `_answer`, in frame order.

        Raises ProtocolError for a publish refused before the bus.
        """
        room = frame.room
        if room is None:
            if len(conn.rooms) != 1:
                raise protocol.ProtocolError(
                    protocol.ErrorCode.ROOM_REQUIRED,
                    "`room` may be left out only while joined to exactly one room",
                    frame.request_id,
                )
            room = next(iter(conn.rooms))
        if conn.identity is not None and not conn.identity.may_publish(room):
            raise protocol.ProtocolError(
                protocol.ErrorCode.FORBIDDEN, f"your token does not allow publishing to {room}", frame.request_id
            )
        if room not in conn.rooms:
            raise protocol.ProtocolError(protocol.ErrorCode.NOT_JOINED, f"join {room} before publishing to it", frame.request_id)
        sender = conn.identity.user if conn.identity is not None else conn.id  # members see the token's `sub`
        try:
            body = pack_message(room, sender, frame.data_key, frame.data, self.config.max_message_bytes)
        except UndeliverableMessage as exc:
            raise protocol.ProtocolError(exc.code, str(exc), frame.request_id) from None
        started = time.perf_counter()
        try:
            future = self.bus.publish_nowait(room, body, frame.idempotency_key)
        except BusUnavailable as exc:  # the bus is closed
            raise bus_error(exc, frame.request_id) from None
        in_flight = self._in_flight.get(conn.id)
        if in_flight is None:
            in_flight = self._in_flight[conn.id] = collections.deque()
        in_flight.append((future, (room, frame.request_id), started))
        future.add_done_callback(lambda done: self._answer(conn, done))

    def _answer(self, conn: Connection, done: asyncio.Future) -> None:
        """Push the replies of the connection's oldest publishes that are answered, in frame order."""
        in_flight = self._in_flight.get(conn.id)
        if in_flight is None:  # the connection ended: nobody to answer
            if not done.cancelled():
                done.exception()  # retrieved, so asyncio does not log it as never retrieved
            return
        while in_flight:
            future, reply, started = in_flight[0]
            if future is not None:
                if not future.done():
                    return
                reply = self._publish_reply(conn, future, reply, started)
            in_flight.popleft()
            if reply is not None and not conn.closed:
                self.outbox.push(conn, reply)
        del self._in_flight[conn.id]

    def _publish_reply(
        self, conn: Connection, future: asyncio.Future, what: tuple[str, protocol.RequestId | None], started: float
    ) -> bytes | None:
        """The encoded ack or error of one answered publish (None: no request id, nothing to ack)."""
        room, request_id = what
        if future.cancelled():
            return None
        exc = future.exception()
        if exc is None:
            position = future.result()
            self.metrics.bus_publish.observe(time.perf_counter() - started)
            if not position.duplicate:  # a retry of a key already used published nothing
                self.metrics.messages_published.inc()
            if request_id is None:
                return None
            return conn.frame(protocol.ack(room, position.seq, position.epoch, request_id, position.duplicate))
        if isinstance(exc, BusUnavailable):
            error = bus_error(exc, request_id)
        else:
            log.error("bug while publishing on connection %s: %r", conn.id, exc)
            error = protocol.ProtocolError(protocol.ErrorCode.INTERNAL_ERROR, "internal error; logged", request_id)
        self.metrics.errors.labels(error.code.value).inc()
        return conn.frame(protocol.error(error.code, error.message, error.request_id))

    async def _settle(self, conn: Connection) -> None:
        """Wait until every publish of the connection is answered (and its reply pushed)."""
        while (in_flight := self._in_flight.get(conn.id)) and not conn.closed:
            await asyncio.wait((in_flight[0][0],))
