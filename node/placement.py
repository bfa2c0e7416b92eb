"""A worker's view of placement: its copy of the ring and "do I own this room?".

Owns the worker's `RingSource` (the control plane's ring polled from Redis,
else the static `--nodes` list, else the lone-node ring: this node's own
workers), the worker's `GET /route` and `GET /ring` (the same answers as the
router's, from this copy), and the `moved` hint a join for a room owned by
another worker earns when `placement_hint` is `hint`.

The lone-node ring lets a node started alone (no control plane ring in Redis,
no `--nodes`) route among its own workers: each worker computes its siblings'
ids, public URLs and addresses from its settings exactly as each sibling
computes its own (`NodeConfig.sibling_members`), so all agree without talking.
With Redis, a ring the control plane publishes replaces it as soon as it
exists, and it comes back if that key disappears.

Placement never decides correctness: a worker serves every room it is asked
for, owned or not; the hint only steers the client. It must not hash rooms
itself (`router.ring` does) nor refuse joins.
"""

from __future__ import annotations

from aiohttp import web

from common.redis_connect import RedisTarget
from node import protocol
from node.config import NodeConfig
from router import answers
from router.membership import RingSource, make_ring_source
from router.ring import EmptyRing, Ring
from router.service import preflight, respond

HINT = "hint"


class Placement:
    def __init__(self, config: NodeConfig) -> None:
        self.member_id = config.shard_id
        self.hint_enabled = config.placement_hint == HINT
        self.max_room_name_chars = config.max_room_name_chars
        # The bus's Redis with its TLS, password and Sentinel settings (common.redis_connect).
        redis_url = RedisTarget.from_settings(config) if config.bus in ("redis", "redis-cluster") else ""
        self.source: RingSource | None = make_ring_source(
            redis_url, config.nodes, config.key_prefix, config.ring_poll_interval_s, config.bus_timeout_s,
            default=Ring(config.sibling_members(), 0),
        )

    @property
    def ring(self) -> Ring:
        return self.source.ring if self.source is not None else Ring()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/route", self.handle_route)
        app.router.add_get("/ring", self.handle_ring)
        app.router.add_route("OPTIONS", "/route", preflight)
        app.router.add_route("OPTIONS", "/ring", preflight)

    async def start(self) -> None:
        if self.source is not None:
            await self.source.start()

    async def close(self) -> None:
        if self.source is not None:
            await self.source.close()

    def moved_hint(self, room: str) -> dict | None:
        """The `moved` frame for a join of `room` here, or None when this worker owns it
        (or hints are off, or the ring is empty)."""
        if not self.hint_enabled:
            return None
        ring = self.ring
        try:
            owner = ring.route(room)
        except EmptyRing:
            return None
        if owner.id == self.member_id:
            return None
        return protocol.moved(room, owner.url, ring.epoch)

    async def handle_route(self, request: web.Request) -> web.Response:
        return respond(answers.route(self.ring, request.query.get("room"), self.max_room_name_chars))

    async def handle_ring(self, request: web.Request) -> web.Response:
        return respond(answers.ring_view(self.ring))
