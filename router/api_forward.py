"""The route service's share of the HTTP API for backends: forwarding to a worker.

Owns `POST /v1/publish`, `POST /v1/broadcast` and `GET /v1/rooms/{room}/history`
(and `/presence`) on the router: each request goes, as it came (body,
`Authorization`, query), to one worker's internal address (`Member.address`,
else the host:port of its URL), and the worker's answer comes back as it
was. A publish, a history or a presence read goes to the room's owner (its
history and presence are read where they live); a broadcast goes to the
owner of its first room, and that worker publishes to every room (any worker
can publish to any room: the bus carries it). A body the router cannot read
a room from goes to any live worker, which answers the error.

The router does not check API keys: the worker does, and only the workers
hold them, so keys are configured (and rotated) in one place and a router
holds no secret. The router must not publish, read Redis for room traffic,
or import node (it forwards bytes, the worker owns the rules, docs/api.md).

Its own errors (`{"error": CODE, "message": ...}`): 413 `BODY_TOO_LARGE`
(past api_max_body_bytes), 503 `NO_LIVE_WORKER` (empty ring), 503
`WORKER_UNREACHABLE` (the worker refused the connection: nothing was sent,
retry), 503 `PUBLISH_UNCONFIRMED` (the request was sent but no answer came
within api_forward_timeout_s: retry a publish with the same idempotency key).
"""

from __future__ import annotations

import logging
from typing import Callable
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from router.ring import EmptyRing, Member, Ring

log = logging.getLogger("ringcast.router")

PUBLISH_PATH = "/v1/publish"
BROADCAST_PATH = "/v1/broadcast"
HISTORY_PATH = "/v1/rooms/{room}/history"
PRESENCE_PATH = "/v1/rooms/{room}/presence"
RETRY_AFTER_S = 1
BODY_TOO_LARGE = "BODY_TOO_LARGE"
NO_LIVE_WORKER = "NO_LIVE_WORKER"
WORKER_UNREACHABLE = "WORKER_UNREACHABLE"
PUBLISH_UNCONFIRMED = "PUBLISH_UNCONFIRMED"
FORWARDED_HEADERS = ("Authorization", "Content-Type")  # what reaches the worker of the backend's headers
ANSWER_HEADERS = ("Retry-After", "WWW-Authenticate")  # what comes back of the worker's


def member_base_url(member: Member) -> str:
    """http://HOST:PORT of a member's worker: its internal address, else its public URL's host and port."""
    if member.address:
        return f"http://{member.address}"
    parts = urlsplit(member.url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"http://{host}:{port}"


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


class ApiForwarder:
    def __init__(self, ring_of: Callable[[], Ring], max_body_bytes: int, timeout_s: float) -> None:
        """ring_of: the router's current ring; max_body_bytes: bodies past it get 413 (keep it at the
        workers' max_frame_bytes); timeout_s: longest a forwarded request waits for the worker's answer."""
        self._ring_of = ring_of
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PUBLISH_PATH, self.handle_body)
        app.router.add_post(BROADCAST_PATH, self.handle_body)
        app.router.add_get(HISTORY_PATH, self.handle_room_path)
        app.router.add_get(PRESENCE_PATH, self.handle_room_path)
        app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle_body(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, BODY_TOO_LARGE, f"the body is larger than {self.max_body_bytes} bytes")
        return await self._forward(request, _room_of(body, request.path), body)

    async def handle_room_path(self, request: web.Request) -> web.Response:
        return await self._forward(request, request.match_info["room"], None)

    async def _forward(self, request: web.Request, room: str | None, body: bytes | None) -> web.Response:
        ring = self._ring_of()
        try:
            member = ring.route(room) if room else next(iter(ring.members.values()))
        except (EmptyRing, StopIteration):
            return _error(503, NO_LIVE_WORKER, "no live worker in the ring; retry shortly")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        url = member_base_url(member) + request.path_qs
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as answer:
                payload = await answer.read()
                kept = {name: answer.headers[name] for name in ANSWER_HEADERS if name in answer.headers}
                return web.Response(body=payload, status=answer.status, headers=kept,
                                    content_type=answer.content_type)
        except aiohttp.ClientConnectorError as exc:
            log.warning("API request for %s: worker %s unreachable: %s", room, member.id, exc)
            return _error(503, WORKER_UNREACHABLE, f"worker {member.id} cannot be reached; nothing was sent; retry")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("API request for %s: no answer from worker %s: %s", room, member.id, exc)
            if request.method == "POST":
                return _error(503, PUBLISH_UNCONFIRMED,
                              f"worker {member.id} did not answer: the publish may or may not have happened; "
                              "retry with the same idempotency_key")
            return _error(503, WORKER_UNREACHABLE, f"worker {member.id} did not answer; retry")


def _room_of(body: bytes, path: str) -> str | None:
    """The room a publish names, or a broadcast's first room; None when the body does not say."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    if path == PUBLISH_PATH:
        room = document.get("room")
    else:
        rooms = document.get("rooms")
        room = rooms[0] if isinstance(rooms, list) and rooms else None
    return room if isinstance(room, str) and room else None
