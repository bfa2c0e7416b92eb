"""The answers of `GET /route` and `GET /ring`, as (status, JSON body). No I/O.

Owns the shape of the route service's replies and its error codes, so the
router process (`router.service`) and every worker (`node.placement`) answer
the same question the same way. Room names are validated by the wire
protocol's own rule (`common.rooms`): the rule lives in one place.

Error codes (body `{"error": CODE, "message": ...}`):

| status | code | when |
|---|---|---|
| 400 | `INVALID_ROOM` | `room` missing, empty, too long or outside the room-name character set |
| 503 | `NO_LIVE_WORKER` | the ring has no member (no control plane ring yet and no `--nodes`, or every worker is dead); retry after `Retry-After` seconds |

It must not hash rooms itself (the ring does) nor know HTTP frameworks.
"""

from __future__ import annotations

from typing import Any

from common.rooms import InvalidRoomName, check_room_name
from router.ring import EmptyRing, Ring

INVALID_ROOM = "INVALID_ROOM"
NO_LIVE_WORKER = "NO_LIVE_WORKER"
NO_LIVE_WORKER_RETRY_AFTER_S = 1  # the control plane publishes a new ring within about a second

# CORS: any page may ask where a room lives; the answers are public and carry no credentials.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}

Answer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, extra headers


def route(ring: Ring, room: Any, max_room_name_chars: int) -> Answer:
    """Where `room` lives: {room, node, url, epoch}, or a 400/503 error body."""
    try:
        name = check_room_name(room, max_room_name_chars)
    except InvalidRoomName as exc:
        return 400, {"error": INVALID_ROOM, "message": str(exc)}, {}
    try:
        member = ring.route(name)
    except EmptyRing:
        return (
            503,
            {"error": NO_LIVE_WORKER, "message": "no live worker in the ring; retry shortly", "epoch": ring.epoch},
            {"Retry-After": str(NO_LIVE_WORKER_RETRY_AFTER_S)},
        )
    return 200, {"room": name, "node": member.id, "url": member.url, "epoch": ring.epoch}, {}


def ring_view(ring: Ring) -> Answer:
    """The ring as operators and tools see it: epoch and members with weights."""
    return 200, ring.to_dict(), {}
