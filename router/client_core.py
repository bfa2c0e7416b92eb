"""The client's protocol state machine: frames in, frames to send and events out. No sockets, no asyncio.

Owns everything a ringcast client must get right whatever drives it (the
SDK in `router/client.py`, the drills' verifying clients in `chaos/`, the
delivery tests' reader), in the sans-I/O style of python-websockets and h11:

- building every client frame (`join`, `leave`, `message`, `history`,
  `ping`, `refresh`), in this one place;
- request ids: allocation, matching `joined`/`left`/`ack`/`pong`/`history`/
  `refreshed` and `error` replies to the request that caused them, and a
  bound on the requests in flight (`max_pending_requests`);
- reading a connection token's `exp` (`token_expiry`: the payload decoded,
  never verified; the client cannot verify and only schedules by it);
- per-room stream positions (`seq`, `epoch`), dropping duplicates (messages
  at or before the position), noticing gaps (a live stream that skips
  positions) and repairing them by re-joining with `since`;
- resume: every join sent on a new connection carries `since` = the last
  position seen, so the server replays what was missed (docs/protocol.md,
  "Delivery promise"), and a `joined` with `recovered: false` is reported at
  the very place of the gap;
- the hint policy: a `reconnect` frame means "once the server closes, wait
  `delayMs`, then go to `url` (or ask the router)"; a `moved` frame is
  followed only for the home room (the smallest room name), never to an
  older ring epoch than one already seen, and at most `max_moved_follows`
  times in a row at one ring epoch, and not to a host the driver found
  unreachable (`host_unreachable`) until a newer ring epoch names it or a
  connection to it opens (a worker whose ring is older than the control
  plane's detection of a dead or cut-off host would otherwise send the
  client back into the silence);
  a re-join refused with BUS_UNAVAILABLE
  means "drop this connection and come back with backoff".

How to drive it: call `connection_opened(url)` when a socket is open, feed
every decoded server frame to `receive(frame)` and act on the events it
returns, call `connection_lost()` when the socket ends, and after every call
send what `frames_to_send()` returns, in order. `join`/`leave`/`publish`/
`history`/`ping`/`refresh` queue their frame and return the `Request` (its `id` is how
the reply event names it; `Request.waiter` is a slot for the driver's own
future, never touched here).

It must not do I/O, read clocks, sleep or choose delays (the driver applies
`router.backoff` and decides when to refresh a token), nor hash rooms (the route service answers); error codes
are plain strings, so it does not depend on `node/`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

BUS_UNAVAILABLE = "BUS_UNAVAILABLE"
TOO_MANY_MISSED = "too_many_missed"  # a resume's `joined` reason: the oldest page comes first, more is kept
MAX_EPOCHS_REMEMBERED = 4  # per room: older epochs recognised as "already left" (out-of-order), not as a new stream
MAX_UNREACHABLE_HOSTS = 64  # hosts remembered as unreachable (oldest forgotten first): bounded whatever the hints say

MISSING: Any = object()  # "argument not given" (None is a valid `data`)


def _host_of(url: str) -> str:
    """The host part of a worker URL ("" when it has none)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


# --- errors (one hierarchy for the core and the SDK) ------------------------------------------------------------

class ClientError(Exception):
    """Base of every error the client raises."""


class ServerError(ClientError):
    """The server answered a request with an `error` frame (docs/protocol.md lists the codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(ClientError):
    """The connection dropped while the request was in flight (or there was none); it may or may not have happened."""


class ClientClosed(ClientError):
    """The client was closed."""


class TooManyRequests(ClientError):
    """`max_pending_requests` requests are already waiting for their reply; nothing was sent."""


class AuthenticationFailed(ClientError):
    """The cluster refused the client's token and the client has no way to get another (no `get_token`).

    reason: "unauthorized" (HTTP 401 at the upgrade) or "token_expired" (the worker closed with 4001).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def token_expiry(token: str) -> float | None:
    """A JWT's `exp` (Unix seconds), read from its payload WITHOUT verifying anything; None if it has none.

    Only for scheduling a refresh: the worker verifies; a client holds no key.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):  # (json.JSONDecodeError and UnicodeDecodeError are ValueErrors)
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return float(exp)


# --- values -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Position:
    seq: int
    epoch: str

    def as_since(self) -> dict[str, Any]:
        return {"seq": self.seq, "epoch": self.epoch}


@dataclass(slots=True, eq=False)
class Request:
    id: int
    kind: str  # "join", "leave", "publish", "history", "ping", "refresh"
    room: str | None
    frame: dict[str, Any]
    since: Position | None = None  # a join's resume position, if it carried one
    waiter: Any = None  # the driver's slot (e.g. an asyncio future); the core never touches it


# --- events (what `receive` returns) ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Connected:
    """`welcome` arrived: the re-joins of every room are queued; requests may go out after them."""
    frame: dict[str, Any]
    worker_id: str | None


@dataclass(frozen=True, slots=True)
class Message:
    """A message for the application: the next one of its room's stream."""
    room: str
    frame: dict[str, Any]
    declared_jump: bool = False  # it skips positions the server declared lost (after `recovered: false`)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A message at or before the room's position (same epoch): dropped, not for the application."""
    room: str
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutOfOrder:
    """A message of an epoch the room's stream has already left: dropped."""
    room: str
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Gap:
    """A live stream skipped positions: the message was dropped, and a leave + join with `since` is queued."""
    room: str
    last: Position  # the position the stream had reached
    frame: dict[str, Any]  # the message that jumped


@dataclass(frozen=True, slots=True)
class Joined:
    """A room's `joined`. `since` is the position the join resumed from (None: a plain join)."""
    room: str
    frame: dict[str, Any]
    since: Position | None
    request: Request | None
    # `too_many_missed` on a resume: the page that follows is the oldest part of what was missed and
    # the rest is still kept, so the core goes on fetching (a re-join with `since` at the page's end).
    # Nothing is lost yet, and the gap is not here: the stream is not marked.
    fetching_more: bool = False

    @property
    def recovered(self) -> bool | None:
        return self.frame.get("recovered")  # None: no resume was asked for

    @property
    def unrecovered(self) -> bool:
        """The resume could not be complete: the gap is here, in the stream."""
        return self.frame.get("recovered") is False and not self.fetching_more


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer (`ack`, `left`, `pong`, `history`, `refreshed`) to a request."""
    request: Request
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """An `error` frame answering a request. `room_dropped`: a refused join; the room is no longer joined."""
    request: Request | None  # None: an id-less frame of a gap repair
    code: str
    message: str
    frame: dict[str, Any]
    room_dropped: bool = False

    def error(self) -> ServerError:
        return ServerError(self.code, self.message)


@dataclass(frozen=True, slots=True)
class PresenceDiff:
    """A `presence_diff` of a joined room: members who joined and left it (docs/protocol.md), for the application."""
    room: str
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notice:
    """A frame the core has no use for (an unmatched error, an unknown type): for the application's logs."""
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Leave this connection, then connect again.

    close_now: close the socket yourself now (`moved`, a refused re-join);
        otherwise the server closes it (a `reconnect` frame): keep reading until it does.
    url: where to connect next; None: ask the router.
    delay_s: how long to wait first; None: the driver's backoff schedule decides (a failure).
    """
    reason: str  # "moved", "reconnect:<reason>", "rejoin_refused"
    url: str | None
    delay_s: float | None
    close_now: bool
    frame: dict[str, Any] | None = None


Event = (Connected | Message | Duplicate | OutOfOrder | Gap | Joined | Reply | RequestFailed | Notice | Reconnect
         | PresenceDiff)


@dataclass(slots=True)
class RoomState:
    position: Position | None = None  # the last (seq, epoch) seen: from `joined` or the latest message
    joined_once: bool = False  # a `joined` arrived at least once (a refused re-join keeps the room)
    joining: bool = False  # a join is in flight on this connection: messages wait for its `joined`
    join_sent: bool = False  # a join went out on this connection
    accept_jump: bool = False  # the server declared a loss: the next message may skip positions
    epochs_left: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_EPOCHS_REMEMBERED))


class ClientCore:
    """One connection's client state machine (rooms and positions outlive the sockets)."""

    def __init__(self, *, resume: bool = True, max_moved_follows: int = 3, max_pending_requests: int = 1000) -> None:
        """
        resume: join with `since` = the last position seen, drop duplicates, repair gaps; False
            joins at the live position every time and hands every message on as it comes.
        max_moved_follows: `moved` hints followed in a row at one ring epoch (two workers that
            disagree about the ring cannot bounce a client forever).
        max_pending_requests: requests awaiting their reply; past it a new request raises
            TooManyRequests (each costs its frame's memory until answered or the connection ends).
        """
        if max_pending_requests < 1:
            raise ValueError("max_pending_requests must be >= 1")
        self.resume = resume
        self.max_moved_follows = max_moved_follows
        self.max_pending_requests = max_pending_requests
        self.rooms: dict[str, RoomState] = {}
        self.url: str | None = None  # the socket's URL, once opened
        self.connected = False  # `welcome` received on the current socket
        self.worker_id: str | None = None
        self.last_moved: dict[str, dict[str, Any]] = {}  # room -> the last `moved` frame for it
        self.unrecovered: dict[str, dict[str, Any]] = {}  # room -> the last `joined` with recovered: false
        self.duplicates_dropped = 0
        self.stale_dropped = 0  # messages of rooms not joined, or arriving while a room's join is in flight
        self._pending: dict[int, Request] = {}
        self._next_id = 1
        self._outbox: list[dict[str, Any]] = []
        self._repairs: deque[str] = deque()  # rooms whose id-less gap-repair join awaits its `joined`
        self._ring_epoch = -1  # newest ring epoch seen (route answers, followed hints): older hints are stale
        self._moved_epoch = -1
        self._moved_follows = 0
        self._leaving_for_moved = False  # the current socket is being left for a followed `moved`
        # host -> the newest ring epoch known when it went silent (None: none known yet; the first hint to it
        # then fixes it): `moved` hints to it at that epoch or older are not followed.
        self._unreachable: dict[str, int | None] = {}

    # --- what the driver reads --------------------------------------------------------------------------------

    @property
    def home_room(self) -> str | None:
        """The room the connection is placed by: the smallest name (the rule workers use too)."""
        return min(self.rooms) if self.rooms else None

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    def position(self, room: str) -> Position | None:
        state = self.rooms.get(room)
        return state.position if state is not None else None

    def is_live(self, room: str) -> bool:
        """Joined on this connection, with no join in flight."""
        state = self.rooms.get(room)
        return state is not None and state.join_sent and not state.joining

    def frames_to_send(self) -> list[dict[str, Any]]:
        """The frames queued since the last call, in the order they must go out."""
        frames, self._outbox = self._outbox, []
        return frames

    # --- the socket's life ------------------------------------------------------------------------------------

    def connection_opened(self, url: str) -> None:
        self.url = url
        self.connected = False
        self._unreachable.pop(_host_of(url), None)  # it answered: no longer silent, its hints are followed again

    def route_answer(self, ring_epoch: int | None) -> None:
        """A route lookup answered at `ring_epoch`: hints from older rings are stale from now on."""
        if isinstance(ring_epoch, int):
            self._ring_epoch = max(self._ring_epoch, ring_epoch)

    @property
    def unreachable_hosts(self) -> dict[str, int | None]:
        """Hosts found silent -> the ring epoch at that finding (None: before any): `moved` hints there at that
        epoch or older are not followed. A copy."""
        return dict(self._unreachable)

    def host_unreachable(self, url: str) -> None:
        """The host of `url` did not answer: no pong nor any frame within the liveness window, or a connect
        that timed out (not one refused: a refusing host is up). Until a ring epoch newer than the newest
        seen now, `moved` hints to that host are not followed (the client stays where it is served)."""
        host = _host_of(url)
        if not host:
            return
        self._unreachable.pop(host, None)
        self._unreachable[host] = self._ring_epoch if self._ring_epoch >= 0 else None
        while len(self._unreachable) > MAX_UNREACHABLE_HOSTS:
            del self._unreachable[next(iter(self._unreachable))]

    def connection_lost(self) -> list[Request]:
        """The socket ended: every request in flight is returned (failed: it may or may not have happened)."""
        failed = list(self._pending.values())
        self._pending.clear()
        self._outbox.clear()
        self._repairs.clear()
        self.connected = False
        self.url = None
        if not self._leaving_for_moved:
            self._moved_follows = 0  # the bound is on moves in a row
        self._leaving_for_moved = False
        for state in self.rooms.values():
            state.join_sent = state.joining = False
        return failed

    # --- requests ---------------------------------------------------------------------------------------------

    def join(self, room: str) -> Request | None:
        """Join `room` (re-joined on every new connection); the join request if connected, else None."""
        if room in self.rooms:
            raise ValueError(f"already joined {room!r}")
        self.rooms[room] = RoomState()
        return self._send_join(room) if self.connected else None

    def leave(self, room: str) -> Request | None:
        """Leave `room` (no longer re-joined); the leave request if connected, else None."""
        if self.rooms.pop(room, None) is None:
            raise ValueError(f"not joined {room!r}")
        if room in self._repairs:
            self._repairs.remove(room)
        if not self.connected:
            return None
        return self._request("leave", room, {"type": "leave", "room": room})

    def forget_room(self, room: str) -> None:
        """Stop tracking `room` without telling the server (its join was given up on)."""
        self.rooms.pop(room, None)

    def publish(self, room: str, text: str | None = None, *, data: Any = MISSING, payload: Any = MISSING,
                idempotency_key: str | None = None) -> Request:
        """Publish exactly one of `text`, `data` or `payload` (delivered under the same field name).

        idempotency_key: sent as `idempotencyKey`; the server publishes one key at most once per room
        within its idempotency window, so sending the same publish again is safe (docs/protocol.md).
        """
        given = [(name, value) for name, value in (("text", text), ("data", data), ("payload", payload))
                 if value is not MISSING and not (name == "text" and value is None)]
        if len(given) != 1:
            raise ValueError("give exactly one of text, data or payload")
        name, value = given[0]
        frame = {"type": "message", "room": room, name: value}
        if idempotency_key is not None:
            frame["idempotencyKey"] = idempotency_key
        return self._request("publish", room, frame)

    def history(self, room: str, since: Position | None = None, limit: int | None = None) -> Request:
        frame: dict[str, Any] = {"type": "history", "room": room}
        if since is not None:
            frame["since"] = since.as_since()
        if limit is not None:
            frame["limit"] = limit
        return self._request("history", room, frame)

    def presence(self, room: str, stats: bool = False) -> Request:
        """Who is in `room` (`presence`), or how many (`presence_stats`); no join needed, the token's `rooms` scope applies."""
        kind = "presence_stats" if stats else "presence"
        return self._request(kind, room, {"type": kind, "room": room})

    def ping(self) -> Request:
        return self._request("ping", None, {"type": "ping"})

    def refresh(self, token: str) -> Request:
        """Offer the worker a new token for this connection; answered by `refreshed` (a Reply) or an error.

        Not bounded by max_pending_requests: a refresh that could not go out would cost the connection.
        """
        return self._request("refresh", None, {"type": "refresh", "token": token}, bounded=False)

    def cancel(self, request: Request) -> None:
        """The driver stopped waiting (a timeout): a late reply is then ignored."""
        self._pending.pop(request.id, None)

    # --- frames in --------------------------------------------------------------------------------------------

    def receive(self, frame: dict[str, Any]) -> list[Event]:
        """Feed one decoded server frame; returns what happened (and may queue frames to send)."""
        kind = frame.get("type")
        if kind == "message":
            return self._on_message(frame)
        if kind == "welcome":
            return self._on_welcome(frame)
        if kind == "joined":
            return self._on_joined(frame)
        if kind == "error":
            return self._on_error(frame)
        if kind == "reconnect":
            url = frame.get("url") if isinstance(frame.get("url"), str) else None
            delay_ms = frame.get("delayMs")
            delay_s = max(0, delay_ms) / 1000 if isinstance(delay_ms, (int, float)) else 0.0
            return [Reconnect(f"reconnect:{frame.get('reason', '')}", url, delay_s, close_now=False, frame=frame)]
        if kind == "moved":
            return self._on_moved(frame)
        if kind == "presence_diff":
            room = frame.get("room")
            return [PresenceDiff(room, frame)] if isinstance(room, str) and room in self.rooms else [Notice(frame)]
        request = self._pending.pop(frame["id"], None) if isinstance(frame.get("id"), int) else None
        if request is None:
            return [Notice(frame)]
        return [Reply(request, frame)]

    def _on_welcome(self, frame: dict[str, Any]) -> list[Event]:
        self.connected = True
        self.worker_id = frame.get("workerId") if isinstance(frame.get("workerId"), str) else None
        # Re-join before any request: the worker handles one connection's frames in order, so a
        # publish queued after its room's join never meets NOT_JOINED.
        for room in sorted(self.rooms):
            self._send_join(room)
        return [Connected(frame, self.worker_id)]

    def _on_message(self, frame: dict[str, Any]) -> list[Event]:
        room = frame.get("room")
        state = self.rooms.get(room) if isinstance(room, str) else None
        if state is None or state.joining:
            # Not ours any more, or what an earlier membership still sent while a re-join is in
            # flight: the join's replay delivers it again, in place.
            self.stale_dropped += 1
            return []
        seq, epoch = frame.get("seq"), frame.get("epoch")
        if not isinstance(seq, int) or not isinstance(epoch, str):
            return [Message(room, frame)]
        current = state.position
        if not self.resume or current is None:
            if current is None or current.epoch != epoch or seq > current.seq:
                state.position = Position(seq, epoch)
            return [Message(room, frame)]
        if state.accept_jump:
            state.accept_jump = False
            jumped = epoch != current.epoch or seq != current.seq + 1
            self._move_to(state, Position(seq, epoch))
            return [Message(room, frame, declared_jump=jumped)]
        if epoch == current.epoch:
            if seq <= current.seq:
                self.duplicates_dropped += 1
                return [Duplicate(room, frame)]
            if seq == current.seq + 1:
                state.position = Position(seq, epoch)
                return [Message(room, frame)]
        elif epoch in state.epochs_left:
            return [OutOfOrder(room, frame)]
        elif seq == 1:
            self._move_to(state, Position(1, epoch))  # a new stream: the room's state was lost (Redis restarted empty)
            return [Message(room, frame)]
        return [Gap(room, current, frame), *self._repair(room, state)]

    def _repair(self, room: str, state: RoomState) -> list[Event]:
        """Leave and join again with `since`: the server replays the missing part, in order."""
        state.joining = True
        self._outbox.append({"type": "leave", "room": room})
        join: dict[str, Any] = {"type": "join", "room": room}
        if state.position is not None:
            join["since"] = state.position.as_since()
        self._outbox.append(join)
        if room not in self._repairs:
            self._repairs.append(room)
        return []

    def _on_joined(self, frame: dict[str, Any]) -> list[Event]:
        request = self._pending.pop(frame["id"], None) if isinstance(frame.get("id"), int) else None
        room = frame.get("room")
        state = self.rooms.get(room) if isinstance(room, str) else None
        if state is None:
            return [Reply(request, frame)] if request is not None else [Notice(frame)]
        since = request.since if request is not None else state.position if room in self._repairs else None
        if room in self._repairs:
            self._repairs.remove(room)
        state.joining = False
        state.join_sent = True
        state.joined_once = True
        seq, epoch = frame.get("seq"), frame.get("epoch")
        if isinstance(seq, int):
            joined_at = Position(seq, str(epoch or ""))
            current = state.position
            if current is None or not self.resume:
                state.position = joined_at
            elif current.epoch != joined_at.epoch:
                self._move_to(state, Position(0, joined_at.epoch))  # a new stream: its replay starts at seq 1
            # else: same stream; the replayed messages advance the position one by one
        if frame.get("recovered") is False:
            if frame.get("reason") == TOO_MANY_MISSED and since is not None and self.resume:
                # The replayed page ends before the live stream starts: the first live message is a
                # jump, repaired like any gap (re-join with `since`), one page at a time.
                return [Joined(room, frame, since, request, fetching_more=True)]
            state.accept_jump = True
            self.unrecovered[room] = frame
        return [Joined(room, frame, since, request)]

    def _on_error(self, frame: dict[str, Any]) -> list[Event]:
        code, message = str(frame.get("code")), str(frame.get("message", ""))
        request_id = frame.get("id")
        request = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if request is None:
            if request_id is None and self._repairs:
                # The only id-less frames the core sends are a gap repair's leave and join: the repair
                # failed. Come back on a fresh connection, which resumes with `since` anyway.
                return [RequestFailed(None, code, message, frame),
                        Reconnect("rejoin_refused", None, None, close_now=True, frame=frame)]
            return [Notice(frame)]
        if request.kind != "join" or request.room not in self.rooms:
            return [RequestFailed(request, code, message, frame)]
        state = self.rooms[request.room]
        if code == BUS_UNAVAILABLE and state.joined_once:
            # A re-join the bus could not do: keep the room, try again on a fresh connection.
            return [RequestFailed(request, code, message, frame),
                    Reconnect("rejoin_refused", None, None, close_now=True, frame=frame)]
        del self.rooms[request.room]
        return [RequestFailed(request, code, message, frame, room_dropped=True)]

    def _on_moved(self, frame: dict[str, Any]) -> list[Event]:
        room, url, epoch = frame.get("room"), frame.get("url"), frame.get("epoch")
        if not isinstance(room, str) or not isinstance(url, str):
            return [Notice(frame)]
        self.last_moved[room] = frame
        if room != self.home_room or url == self.url:
            return []  # served correctly here; only the home room places the connection
        ring_epoch = epoch if isinstance(epoch, int) else -1
        if ring_epoch < self._ring_epoch:
            return [Notice(frame)]  # a worker behind the ring the router already answered from
        host = _host_of(url)
        if host in self._unreachable:
            silent_at = self._unreachable[host]
            if silent_at is None or ring_epoch <= silent_at:
                self._unreachable[host] = ring_epoch if silent_at is None else silent_at
                return [Notice(frame)]  # a ring not newer than our finding that the host is silent
            del self._unreachable[host]  # a newer ring names it: the control plane has seen it since
        if ring_epoch > self._moved_epoch:
            self._moved_epoch, self._moved_follows = ring_epoch, 0
        if self._moved_follows >= self.max_moved_follows:
            return [Notice(frame)]  # bounced too often at this ring epoch: stay
        self._moved_follows += 1
        self._ring_epoch = max(self._ring_epoch, ring_epoch)
        self._leaving_for_moved = True
        return [Reconnect("moved", url, 0.0, close_now=True, frame=frame)]

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _send_join(self, room: str) -> Request | None:
        state = self.rooms[room]
        if state.join_sent:
            return None  # already sent on this connection
        since = state.position if self.resume and state.position is not None else None
        frame: dict[str, Any] = {"type": "join", "room": room}
        if since is not None:
            frame["since"] = since.as_since()
        state.join_sent = state.joining = True
        return self._request("join", room, frame, since, bounded=False)

    def _request(self, kind: str, room: str | None, frame: dict[str, Any], since: Position | None = None,
                 bounded: bool = True) -> Request:
        if not self.connected:
            raise ConnectionLost("not connected")
        if bounded and len(self._pending) >= self.max_pending_requests:
            raise TooManyRequests(f"{len(self._pending)} requests already await their reply")
        request = Request(self._next_id, kind, room, frame, since)
        self._next_id += 1
        frame["id"] = request.id
        self._pending[request.id] = request
        self._outbox.append(frame)
        return request

    @staticmethod
    def _move_to(state: RoomState, position: Position) -> None:
        current = state.position
        if current is not None and current.epoch != position.epoch and current.epoch not in state.epochs_left:
            state.epochs_left.append(current.epoch)
        state.position = position
