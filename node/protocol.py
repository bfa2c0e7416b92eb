"""The ringcast wire protocol: client frames in, server frames out. No I/O.

Owns the message types, their validation, the error codes and close codes,
the room-name rules and the two codecs (JSON text frames, msgpack binary
frames). It must not touch sockets, asyncio, Redis or clocks: callers pass
in bytes and timestamps and get back values or bytes. Every rule a client can
break raises `ProtocolError` with a documented `ErrorCode`, so the caller can
answer with an `error` frame and keep the connection open.

docs/protocol.md documents everything here for client authors.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import msgpack
import orjson

from common.rooms import DEFAULT_MAX_ROOM_NAME_CHARS, InvalidRoomName, check_room_name
from node.bus import MAX_IDEMPOTENCY_KEY_CHARS, valid_idempotency_key  # the key rule is the bus's (pure, no I/O)

PROTOCOL_VERSION = 1

JSON = "json"
MSGPACK = "msgpack"
SUBPROTOCOL_JSON = "ringcast.json"
SUBPROTOCOL_MSGPACK = "ringcast.msgpack"
SUBPROTOCOLS = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)
CODEC_BY_SUBPROTOCOL = {SUBPROTOCOL_JSON: JSON, SUBPROTOCOL_MSGPACK: MSGPACK, None: JSON}

# The fields a `message` may carry its data in; the delivered frame uses the same one.
DATA_KEYS = ("text", "payload", "data")
MAX_REQUEST_ID_CHARS = 64


class ErrorCode(str, enum.Enum):
    """Codes of `error` frames; the connection stays open after each of them."""

    INVALID_MESSAGE_FORMAT = "INVALID_MESSAGE_FORMAT"  # not a JSON/msgpack object, or a field of the wrong type
    WRONG_FRAME_TYPE = "WRONG_FRAME_TYPE"  # binary frame on a JSON connection or text on a msgpack one
    UNKNOWN_TYPE = "UNKNOWN_TYPE"  # `type` is not one this server knows
    INVALID_ROOM = "INVALID_ROOM"  # room name empty, too long, or outside the character set
    NOT_JOINED = "NOT_JOINED"  # leave/message for a room this connection has not joined
    ROOM_REQUIRED = "ROOM_REQUIRED"  # message without `room` while joined to zero or several rooms
    ALREADY_JOINED = "ALREADY_JOINED"  # join for a room this connection is already in
    TOO_MANY_ROOMS = "TOO_MANY_ROOMS"  # join past max_rooms_per_connection
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"  # the message would exceed max_message_bytes on the bus
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"  # token bucket empty; see retryAfter
    BUS_UNAVAILABLE = "BUS_UNAVAILABLE"  # Redis cannot be reached; nothing was published; retry later
    PUBLISH_UNCONFIRMED = "PUBLISH_UNCONFIRMED"  # Redis did not confirm in time: the message may or may not be published
    INTERNAL_ERROR = "INTERNAL_ERROR"  # a server bug; logged with the connection id
    FORBIDDEN = "FORBIDDEN"  # join/history/publish outside the connection token's `rooms`/`publish` scope
    NEW_ROOM_RATE_EXCEEDED = "NEW_ROOM_RATE_EXCEEDED"  # join of a room new to this user/connection past node.room_quota's rate; see retryAfter
    # `refresh` refused; the connection keeps its current token (and closes 4001 at its expiry):
    TOKEN_INVALID = "TOKEN_INVALID"  # the new token does not verify (signature, exp/nbf/iat, aud/iss, claims)
    TOKEN_SUBJECT_MISMATCH = "TOKEN_SUBJECT_MISMATCH"  # the new token's `sub` is not the connection's user
    TOKEN_SCOPE_LOST = "TOKEN_SCOPE_LOST"  # the new token's `rooms` no longer allow a room the connection is in
    AUTH_DISABLED = "AUTH_DISABLED"  # `refresh` on a worker with auth off: there is no token to replace
    PRESENCE_DISABLED = "PRESENCE_DISABLED"  # presence/presence_stats for a room no --presence-rule covers


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends, with the reason each one means."""

    NORMAL = 1000  # the client asked to close
    GOING_AWAY = 1001  # the worker is shutting down or draining; reconnect (see the reconnect frame)
    PROTOCOL_ERROR = 1002  # a malformed WebSocket frame (RSV bits, bad opcode, unmasked, bad control frame); node/ws_reader.py
    INVALID_PAYLOAD = 1007  # a text frame (or close reason) that is not valid UTF-8; node/ws_reader.py
    POLICY_VIOLATION = 1008  # sustained flooding past the rate limit (per connection or per user)
    MESSAGE_TOO_BIG = 1009  # a frame larger than max_frame_bytes
    INTERNAL_ERROR = 1011  # never sent: a bug while handling a frame is an INTERNAL_ERROR error frame instead
    TRY_AGAIN_LATER = 1013  # worker full (max_connections) or slow consumer (max_outbound_bytes)
    TOKEN_EXPIRED = 4001  # the connection token's `exp` passed while connected; reconnect with a fresh token


class ProtocolError(Exception):
    """A client frame broke a rule; answer with an `error` frame of this code."""

    def __init__(self, code: ErrorCode, message: str, request_id: "RequestId | None" = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


RequestId = Union[str, int]


MAX_EPOCH_CHARS = 64
# The largest `since.seq` (and history `limit`) a client may send. The Redis bus reads
# history from stream ID `since.seq + 1`, built by a Lua 5.1 script whose number-to-string
# conversion ("%.14g") writes 10**14 and above as `1e+14`, which Redis refuses as a stream
# ID. So since.seq + 1 must stay at 14 digits (well inside 2**53, where floats stop being
# exact). No room gets near it: at a million messages a second, 10**14 takes three years.
MAX_SEQ = 10**14 - 2


@dataclass(frozen=True, slots=True)
class Since:
    """A stream position a client has seen: resume after it."""

    seq: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    request_id: RequestId | None = None
    since: Since | None = None  # resume: deliver what came after this position first


@dataclass(frozen=True, slots=True)
class History:
    room: str
    since: Since | None  # None: the latest `limit` messages
    limit: int | None  # None: the server's max_history_page
    request_id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str
    request_id: RequestId | None = None


class Publish(NamedTuple):  # a NamedTuple, not a dataclass like the other frames: the hot one (cheaper to build)
    room: str | None  # None: the one room the connection has joined
    data_key: str  # "text", "payload" or "data": the field the data came in and goes out in
    data: Any
    request_id: RequestId | None = None
    idempotency_key: str | None = None  # `idempotencyKey`: a retry with the same key publishes nothing twice


@dataclass(frozen=True, slots=True)
class Ping:
    request_id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class Refresh:
    """Replace the connection's token in place (node.session verifies it)."""

    token: str
    request_id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class PresenceRequest:
    """`presence` (who is in the room) or `presence_stats` (how many): node.presence answers."""

    room: str
    stats: bool  # True: presence_stats
    request_id: RequestId | None = None


ClientFrame = Union[Join, Leave, Publish, Ping, History, Refresh, PresenceRequest]


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """The protocol's own bounds (the transport bounds frame size before us)."""

    max_room_name_chars: int = DEFAULT_MAX_ROOM_NAME_CHARS
    max_json_depth: int = 32
    max_frame_bytes: int = 64 * 1024


class Decoder:
    """Turns one client frame into a `ClientFrame` or raises `ProtocolError`."""

    def __init__(self, limits: ProtocolLimits) -> None:
        self.limits = limits

    def decode(self, frame: bytes | str, codec: str) -> ClientFrame:
        obj = self._parse(frame, codec)
        if not isinstance(obj, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "a frame must be an object with a `type` field")
        request_id = self._request_id(obj)
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "`type` must be a string", request_id)
        if kind == "message":
            return self._publish(obj, request_id)
        if kind == "join":
            room = self.room(obj.get("room"), request_id)
            return Join(room, request_id, self._since(obj.get("since"), request_id))
        if kind == "history":
            room = self.room(obj.get("room"), request_id)
            limit = obj.get("limit")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SEQ):
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE_FORMAT, f"`limit` must be an integer from 1 to {MAX_SEQ}", request_id
                )
            return History(room, self._since(obj.get("since"), request_id), limit, request_id)
        if kind == "leave":
            return Leave(self.room(obj.get("room"), request_id), request_id)
        if kind in ("presence", "presence_stats"):
            return PresenceRequest(self.room(obj.get("room"), request_id), kind == "presence_stats", request_id)
        if kind == "ping":
            return Ping(request_id)
        if kind == "refresh":
            token = obj.get("token")
            if not isinstance(token, str) or not token:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "`token` must be a non-empty string", request_id)
            return Refresh(token, request_id)
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:32]!r}", request_id)

    def room(self, value: Any, request_id: RequestId | None = None) -> str:
        """Validate a room name (the rule is common.rooms')."""
        try:
            return check_room_name(value, self.limits.max_room_name_chars)
        except InvalidRoomName as exc:
            raise ProtocolError(ErrorCode.INVALID_ROOM, str(exc), request_id) from None

    def _parse(self, frame: bytes | str, codec: str) -> Any:
        if codec == JSON:
            if not isinstance(frame, str):
                raise ProtocolError(ErrorCode.WRONG_FRAME_TYPE, "this connection speaks JSON: send text frames")
            try:
                return orjson.loads(frame)
            except orjson.JSONDecodeError:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "frame is not valid JSON") from None
        if not isinstance(frame, (bytes, bytearray)):
            raise ProtocolError(ErrorCode.WRONG_FRAME_TYPE, "this connection speaks msgpack: send binary frames")
        size = self.limits.max_frame_bytes
        try:
            obj = msgpack.unpackb(
                frame,
                raw=False,
                strict_map_key=True,
                max_str_len=size,
                max_bin_len=0,  # binary values cannot be delivered to JSON members
                max_array_len=size,
                max_map_len=size,
                max_ext_len=0,
            )
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError):
            obj = _NOT_MSGPACK
        # A limit of 0 still lets an *empty* bin or ext through (msgpack checks `len > max`).
        if obj is _NOT_MSGPACK or _holds_binary(obj):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE_FORMAT, "frame is not a valid msgpack map (bin and ext are not allowed)"
            ) from None
        return obj

    @staticmethod
    def _since(value: Any, request_id: RequestId | None) -> Since | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "`since` must be an object {seq, epoch}", request_id)
        seq, epoch = value.get("seq"), value.get("epoch", "")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE_FORMAT, f"`since.seq` must be an integer from 0 to {MAX_SEQ}", request_id
            )
        if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_CHARS:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE_FORMAT, f"`since.epoch` must be a string of at most {MAX_EPOCH_CHARS} characters", request_id
            )
        return Since(seq, epoch)

    @staticmethod
    def _request_id(obj: dict) -> RequestId | None:
        value = obj.get("id")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "`id` must be a string or an integer")
        if isinstance(value, str) and len(value) > MAX_REQUEST_ID_CHARS:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, f"`id` longer than {MAX_REQUEST_ID_CHARS} characters")
        if isinstance(value, int) and not -(2**53) <= value <= 2**53:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "`id` integer out of range (|id| <= 2**53)")
        return value

    def _publish(self, obj: dict, request_id: RequestId | None) -> Publish:
        present = [key for key in DATA_KEYS if key in obj]
        if len(present) != 1:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE_FORMAT,
                "a message carries its data in exactly one of `text`, `payload` or `data`",
                request_id,
            )
        key = present[0]
        data = obj[key]
        if key == "text" and not isinstance(data, str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE_FORMAT, "`text` must be a string", request_id)
        if isinstance(data, (dict, list)) and nesting_depth(data, self.limits.max_json_depth) > self.limits.max_json_depth:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE_FORMAT, f"data nested deeper than {self.limits.max_json_depth} levels", request_id
            )
        room = obj.get("room")
        if room is not None:
            room = self.room(room, request_id)
        idempotency_key = obj.get("idempotencyKey")
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE_FORMAT,
                f"`idempotencyKey` must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters (no space)",
                request_id,
            )
        return Publish(room, key, data, request_id, idempotency_key)


_NOT_MSGPACK = object()
_BINARY = (bytes, msgpack.ExtType)


def _holds_binary(value: Any) -> bool:
    """Whether a decoded msgpack value holds bytes or an ext value anywhere (keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _BINARY):
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def nesting_depth(value: Any, give_up_past: int) -> int:
    """Depth of nested arrays/objects, stopping early once past `give_up_past`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > give_up_past:
                return deepest
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return deepest


# --- server frames -----------------------------------------------------------

def encode(frame: dict, codec: str) -> bytes:
    """Encode a server frame for one codec (JSON text bytes or msgpack bytes)."""
    if codec == JSON:
        return orjson.dumps(frame)
    return msgpack.packb(frame, use_bin_type=True)


def welcome(connection_id: str, worker_id: str, limits: dict[str, Any]) -> dict:
    return {
        "type": "welcome",
        "protocol": PROTOCOL_VERSION,
        "connectionId": connection_id,
        "workerId": worker_id,
        "limits": limits,
    }


def _with_id(frame: dict, request_id: RequestId | None) -> dict:
    if request_id is not None:
        frame["id"] = request_id
    return frame


RECOVERY_EPOCH_CHANGED = "epoch_changed"  # the room's history was lost (e.g. Redis restarted empty)
RECOVERY_HISTORY_TRUNCATED = "history_truncated"  # history no longer reaches back to the position
RECOVERY_NO_HISTORY = "no_history"  # the room keeps no history (its policy size is 0)
RECOVERY_TOO_MANY_MISSED = "too_many_missed"  # more missed than max_history_page
RECOVERY_HISTORY_UNAVAILABLE = "history_unavailable"  # a gap on the live stream whose history could not be read
RECOVERY_REASONS = (RECOVERY_EPOCH_CHANGED, RECOVERY_HISTORY_TRUNCATED, RECOVERY_NO_HISTORY, RECOVERY_TOO_MANY_MISSED,
                    RECOVERY_HISTORY_UNAVAILABLE)


def joined(
    room: str, seq: int, epoch: str, request_id: RequestId | None = None,
    recovered: bool | None = None, reason: str | None = None,
) -> dict:
    """`seq`/`epoch`: the room's position when the live stream starts for this member.

    `recovered` is present only for a resuming join (one with `since`).
    """
    frame: dict[str, Any] = {"type": "joined", "room": room, "seq": seq, "epoch": epoch}
    if recovered is not None:
        frame["recovered"] = recovered
        if reason is not None:
            frame["reason"] = reason
    return _with_id(frame, request_id)


def history(room: str, seq: int, epoch: str, messages: list[dict], complete: bool, request_id: RequestId | None) -> dict:
    return _with_id(
        {"type": "history", "room": room, "seq": seq, "epoch": epoch, "messages": messages, "complete": complete},
        request_id,
    )


def presence(room: str, members: list[dict], count: int, complete: bool, request_id: RequestId | None) -> dict:
    """Who is in `room`: members `{user, conn, info, worker}`; `complete` false when cut at presence_max_members."""
    return _with_id({"type": "presence", "room": room, "members": members, "count": count, "complete": complete},
                    request_id)


def presence_stats(room: str, connections: int, users: int, complete: bool, request_id: RequestId | None) -> dict:
    return _with_id(
        {"type": "presence_stats", "room": room, "connections": connections, "users": users, "complete": complete},
        request_id,
    )


def presence_diff(
    room: str, joined: list[dict], left: list[dict], joined_count: int, left_count: int, truncated: bool
) -> dict:
    """Members who joined and left `room` over one window; `truncated`: the lists are empty, only counts are sent."""
    return {"type": "presence_diff", "room": room, "joined": joined, "left": left,
            "joinedCount": joined_count, "leftCount": left_count, "truncated": truncated}


def left(room: str, request_id: RequestId | None = None) -> dict:
    return _with_id({"type": "left", "room": room}, request_id)


def ack(room: str, seq: int, epoch: str, request_id: RequestId, duplicate: bool = False) -> dict:
    """`duplicate`: the publish's idempotency key was already used; seq/epoch are the first publish's."""
    frame = {"type": "ack", "id": request_id, "room": room, "seq": seq, "epoch": epoch}
    if duplicate:
        frame["duplicate"] = True
    return frame


def refreshed(expires_at_s: float, request_id: RequestId | None = None) -> dict:
    """The connection now holds the new token; it is closed 4001 at `expiresAt` (Unix seconds: `exp` + leeway)."""
    return _with_id({"type": "refreshed", "expiresAt": expires_at_s}, request_id)


def pong(ts_ms: int, request_id: RequestId | None = None) -> dict:
    return _with_id({"type": "pong", "ts": ts_ms}, request_id)


def message(room: str, seq: int, epoch: str, ts_ms: int, sender: str, data_key: str, data: Any) -> dict:
    return {
        "type": "message",
        "room": room,
        "seq": seq,
        "epoch": epoch,
        "ts": ts_ms,
        "from": sender,
        data_key: data,
    }


def error(
    code: ErrorCode, text: str, request_id: RequestId | None = None, retry_after_s: float | None = None
) -> dict:
    frame: dict[str, Any] = {"type": "error", "code": code.value, "message": text}
    if retry_after_s is not None:
        frame["retryAfter"] = round(retry_after_s, 3)
    return _with_id(frame, request_id)


def reconnect(reason: str, delay_ms: int, url: str | None = None) -> dict:
    frame: dict[str, Any] = {"type": "reconnect", "reason": reason, "delayMs": int(delay_ms)}
    if url is not None:
        frame["url"] = url
    return frame


def moved(room: str, url: str, epoch: int) -> dict:
    """Placement hint: `room` is served here, but the ring (at `epoch`) places it at `url`."""
    return {"type": "moved", "room": room, "url": url, "epoch": epoch}
