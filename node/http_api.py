"""The HTTP API for backends: publish, broadcast and read history without a WebSocket.

Owns the routes every worker serves for backends (docs/api.md, the OpenAPI
file docs/openapi-api.yaml):

- `POST /v1/publish` `{room, text|data|payload, idempotency_key?}` ->
  `{room, seq, epoch, duplicate}`
- `POST /v1/broadcast` `{rooms: [...], text|data|payload, idempotency_key?}` ->
  `{results: [{room, seq, epoch, duplicate} | {room, error, message}]}`
- `GET /v1/rooms/{room}/history?since_seq=&epoch=&limit=` -> `{room, seq, epoch, messages, complete}`
- `GET /v1/rooms/{room}/presence` -> node.presence's snapshot `{room, members, count, complete}`

Any worker publishes to any room: the bus carries the message to the workers
whose members are in it, so a backend needs no knowledge of placement. Each
request is authenticated with an API key (`node.api_keys`; `Authorization:
Bearer SECRET`); members see the message `from` `api:NAME`. A message obeys
the WebSocket rules: the body at most `max_frame_bytes`, the data nested at
most `max_json_depth`, the message at most `max_message_bytes` on the bus and
as delivered in either codec (node.session's measure). An idempotency key
makes a retry safe (node.bus): the first publish's position comes back with
`duplicate: true` and nothing is delivered twice.

Errors are JSON `{"error": CODE, "message": ...}` (the codes are in
`ERRORS`). It must not hold WebSockets, index rooms or talk to Redis other
than through the bus interface.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from common.rooms import InvalidRoomName, check_room_name
from node import api_keys, protocol
from node.api_keys import ApiKeyRefused, ApiKeys
from node.bus import LATEST, Bus, BusUnavailable, HistoryPage, Position, PublishUnconfirmed, valid_idempotency_key
from node.config import NodeConfig
from node.hub import Hub
from node.metrics import NodeMetrics
from node.presence import PresenceDisabled
from node.session import UndeliverableMessage, pack_message

log = logging.getLogger("ringcast.http_api")

PUBLISH_PATH = "/v1/publish"
BROADCAST_PATH = "/v1/broadcast"
HISTORY_PATH = "/v1/rooms/{room}/history"
PRESENCE_PATH = "/v1/rooms/{room}/presence"
BUS_RETRY_AFTER_S = 1  # Retry-After of a 503: the bus reconnects within about a second

# code -> HTTP status; docs/api.md explains each one.
ERRORS = {
    api_keys.API_KEY_REQUIRED: 401,  # no `Authorization: Bearer <secret>`
    api_keys.API_KEY_INVALID: 401,  # a secret that is no configured key's
    api_keys.API_DISABLED: 403,  # the worker has no --api-key: the API refuses everyone
    "INVALID_JSON": 400,  # the body is not one JSON object
    protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value: 400,  # a field missing or of the wrong type or range
    protocol.ErrorCode.INVALID_ROOM.value: 400,  # a room name empty, too long or outside the character set
    protocol.ErrorCode.TOO_MANY_ROOMS.value: 400,  # a broadcast naming more than api_max_broadcast_rooms rooms
    "BODY_TOO_LARGE": 413,  # the request body is larger than max_frame_bytes
    protocol.ErrorCode.MESSAGE_TOO_LARGE.value: 413,  # the message exceeds max_message_bytes (bus or delivered)
    protocol.ErrorCode.BUS_UNAVAILABLE.value: 503,  # Redis unreachable: nothing was published; retry
    protocol.ErrorCode.PUBLISH_UNCONFIRMED.value: 503,  # outcome unknown: retry with the same idempotency_key
    protocol.ErrorCode.INTERNAL_ERROR.value: 500,  # a server bug; logged
    "PRESENCE_DISABLED": 404,  # GET .../presence of a room no --presence-rule covers
}

PresenceFn = Callable[[str], Awaitable[dict]]


class ApiError(Exception):
    """A request the API refuses: answered with `ERRORS[code]` and `{"error": code, "message": ...}`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(code: str, message: str) -> web.Response:
    status = ERRORS[code]
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ringcast-api"'
    elif status == 503:
        headers["Retry-After"] = str(BUS_RETRY_AFTER_S)
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


class HttpApi:
    """The backend routes of one worker."""

    def __init__(self, config: NodeConfig, bus: Bus, metrics: NodeMetrics, presence: PresenceFn | None = None) -> None:
        """presence: `snapshot(room) -> dict` of the worker's presence, when it has one (GET .../presence)."""
        self.config = config
        self.bus = bus
        self.metrics = metrics
        self.keys: ApiKeys = api_keys.parse_api_keys(config.api_key)
        self.presence = presence
        if self.keys.enabled:
            log.info("HTTP API for backends on: API keys %s", ", ".join(self.keys.names))  # names, never secrets

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PUBLISH_PATH, self.handle_publish)
        app.router.add_post(BROADCAST_PATH, self.handle_broadcast)
        app.router.add_get(HISTORY_PATH, self.handle_history)
        if self.presence is not None:
            app.router.add_get(PRESENCE_PATH, self.handle_presence)

    # --- the routes ----------------------------------------------------------------------

    async def handle_publish(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._publish_one)

    async def handle_broadcast(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._broadcast)

    async def handle_history(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._history, read_body=False)

    async def handle_presence(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._presence, read_body=False)

    async def _answer(self, request: web.Request, run: Callable, read_body: bool = True) -> web.Response:
        try:
            key_name = self.keys.check(request.headers.get("Authorization"))
        except ApiKeyRefused as exc:
            return error_response(exc.code, exc.message)
        try:
            body = await self._json_object(request) if read_body else None
            answer = await run(request, body, key_name)
        except ApiError as exc:
            return error_response(exc.code, exc.message)
        except Exception:
            log.exception("bug while serving %s %s for API key %s", request.method, request.path, key_name)
            return error_response(protocol.ErrorCode.INTERNAL_ERROR.value, "internal error; logged")
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _publish_one(self, request: web.Request, body: dict, key_name: str) -> dict:
        room = self._room(body.get("room"))
        data_key, data = self._data(body)
        key = self._idempotency_key(body)
        packed = self._pack(room, api_keys.SENDER_PREFIX + key_name, data_key, data)
        position = await self._publish(room, packed, key)
        return _position(room, position)

    async def _broadcast(self, request: web.Request, body: dict, key_name: str) -> dict:
        rooms = body.get("rooms")
        if not isinstance(rooms, list) or not rooms:
            raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value, "`rooms` must be a non-empty list of room names")
        if len(rooms) > self.config.api_max_broadcast_rooms:
            raise ApiError(protocol.ErrorCode.TOO_MANY_ROOMS.value,
                           f"a broadcast names at most {self.config.api_max_broadcast_rooms} rooms")
        names = [self._room(room) for room in rooms]
        if len(set(names)) != len(names):
            raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value, "`rooms` names a room twice")
        data_key, data = self._data(body)
        key = self._idempotency_key(body)  # per room: a retry of the broadcast publishes only what is missing
        sender = api_keys.SENDER_PREFIX + key_name

        async def publish_to(room: str) -> dict:
            try:
                return _position(room, await self._publish(room, self._pack(room, sender, data_key, data), key))
            except ApiError as exc:
                return {"room": room, "error": exc.code, "message": exc.message}

        # Queued in one loop turn: the Redis bus sends them as one pipeline.
        return {"results": list(await asyncio.gather(*(publish_to(room) for room in names)))}

    async def _history(self, request: web.Request, body: None, key_name: str) -> dict:
        room = self._room(request.match_info["room"])
        query = request.query
        limit = _query_int(query, "limit", 1, self.config.max_history_page, self.config.max_history_page)
        since_seq = _query_int(query, "since_seq", 0, protocol.MAX_SEQ, None)
        epoch = query.get("epoch", "")
        if len(epoch) > protocol.MAX_EPOCH_CHARS:
            raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value,
                           f"`epoch` is at most {protocol.MAX_EPOCH_CHARS} characters")
        try:
            page = await self.bus.read_history(room, LATEST if since_seq is None else since_seq, epoch, limit)
        except BusUnavailable as exc:
            raise ApiError(protocol.ErrorCode.BUS_UNAVAILABLE.value, str(exc)) from None
        messages = [body for body in map(Hub.message_body, page.messages) if body is not None]
        return {"room": room, "seq": page.seq, "epoch": page.epoch, "messages": messages,
                "complete": _complete(page, since_seq, epoch)}

    async def _presence(self, request: web.Request, body: None, key_name: str) -> dict:
        assert self.presence is not None
        room = self._room(request.match_info["room"])
        try:
            return await self.presence(room)
        except PresenceDisabled as exc:
            raise ApiError("PRESENCE_DISABLED", str(exc)) from None
        except BusUnavailable as exc:
            raise ApiError(protocol.ErrorCode.BUS_UNAVAILABLE.value, str(exc)) from None

    # --- the rules -----------------------------------------------------------------------

    async def _json_object(self, request: web.Request) -> dict:
        try:
            raw = await request.read()  # aiohttp refuses a body past client_max_size (max_frame_bytes)
        except web.HTTPRequestEntityTooLarge:
            raise ApiError("BODY_TOO_LARGE", f"the body is larger than {self.config.max_frame_bytes} bytes") from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError("INVALID_JSON", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError("INVALID_JSON", "the body must be a JSON object")
        return body

    def _room(self, value: Any) -> str:
        try:
            return check_room_name(value, self.config.max_room_name_chars)
        except InvalidRoomName as exc:
            raise ApiError(protocol.ErrorCode.INVALID_ROOM.value, str(exc)) from None

    def _data(self, body: dict) -> tuple[str, Any]:
        present = [key for key in protocol.DATA_KEYS if key in body]
        if len(present) != 1:
            raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value,
                           "a message carries its data in exactly one of `text`, `payload` or `data`")
        data_key = present[0]
        data = body[data_key]
        if data_key == "text" and not isinstance(data, str):
            raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value, "`text` must be a string")
        depth = self.config.max_json_depth
        if isinstance(data, (dict, list)) and protocol.nesting_depth(data, depth) > depth:
            raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value, f"data nested deeper than {depth} levels")
        return data_key, data

    @staticmethod
    def _idempotency_key(body: dict) -> str | None:
        key = body.get("idempotency_key")
        if key is not None and not valid_idempotency_key(key):
            raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value,
                           "`idempotency_key` must be 1 to 64 printable ASCII characters (no space)")
        return key

    def _pack(self, room: str, sender: str, data_key: str, data: Any) -> bytes:
        """The bus body of one message, within max_message_bytes on the bus and as delivered (node.session's rule)."""
        try:
            return pack_message(room, sender, data_key, data, self.config.max_message_bytes)
        except UndeliverableMessage as exc:
            raise ApiError(exc.code.value, str(exc)) from None

    async def _publish(self, room: str, packed: bytes, key: str | None) -> Position:
        started = time.perf_counter()
        try:
            position = await self.bus.publish(room, packed, key)
        except PublishUnconfirmed as exc:
            raise ApiError(protocol.ErrorCode.PUBLISH_UNCONFIRMED.value, str(exc)) from None
        except BusUnavailable as exc:
            raise ApiError(protocol.ErrorCode.BUS_UNAVAILABLE.value, str(exc)) from None
        self.metrics.bus_publish.observe(time.perf_counter() - started)
        if not position.duplicate:
            self.metrics.messages_published.inc()
        return position


def _position(room: str, position: Position) -> dict:
    return {"room": room, "seq": position.seq, "epoch": position.epoch, "duplicate": position.duplicate}


def _query_int(query: Any, name: str, lowest: int, highest: int, default: int | None) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lowest - 1
    if not lowest <= value <= highest:
        raise ApiError(protocol.ErrorCode.INVALID_MESSAGE_FORMAT.value,
                       f"`{name}` must be an integer from {lowest} to {highest}")
    return value


def _complete(page: HistoryPage, since_seq: int | None, epoch: str) -> bool:
    """Whether the page reaches the room's latest message (the WebSocket `history` reply's rule)."""
    if page.messages:
        return page.messages[-1].seq >= page.seq
    return page.seq == 0 or (since_seq is not None and epoch == page.epoch and since_seq >= page.seq)
