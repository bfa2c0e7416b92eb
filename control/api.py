"""The operator HTTP API (JSON): read the cluster's state, drain, undrain, rebalance.

Owns the routes, their JSON shapes and error codes (docs/control.md and
docs/openapi-control.yaml list them), bearer-token checks in constant time,
and the follower rule: every replica answers reads from Redis; a mutation
sent to a follower is refused with 409 NOT_LEADER naming the leader (the CLI
follows it). It decides nothing itself: mutations go to `control.leader`.
"""

from __future__ import annotations

import hmac
import logging
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from common.records import Heartbeat
from control.config import ControlConfig
from control.detector import MemberRecord
from control.leader import Controller, NodeStillAlive, UnknownNode
from control.lease import LeaderLease
from control.metrics import ControlMetrics
from control.store import ControlStore, NotLeader
from router.ring import EmptyRing

log = logging.getLogger("ringcast.control.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, **extra) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


# Prometheus scrape jobs, as deploy/prometheus/ringcast-rules.yml expects them (docs/monitoring.md).
NODE_JOB = "ringcast-node"
ROUTER_JOB = "ringcast-router"
CONTROL_JOB = "ringcast-control"

_DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}


def scrape_address(url: str) -> str | None:
    """host:port of a worker's ws:// URL or a replica's or router's http:// URL (their /metrics is there)."""
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def worker_address(record: MemberRecord | None, beat: Heartbeat | None) -> str:
    """A worker's internal HOST:PORT as its membership record or its heartbeat knows it; "" if neither does."""
    return (record.address if record is not None else "") or (beat.address if beat is not None else "")


def address_host(address: str) -> str:
    """The host of a HOST:PORT ([v6]:port included), as the `node` label."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def target_group(address: str, labels: dict[str, str]) -> dict:
    """One entry of Prometheus' HTTP service discovery answer (label values are strings)."""
    return {"targets": [address], "labels": {name: str(value) for name, value in labels.items()}}


class ControlApi:
    def __init__(
        self, config: ControlConfig, store: ControlStore, lease: LeaderLease, controller: Controller,
        metrics: ControlMetrics,
    ) -> None:
        self.config = config
        self.store = store
        self.lease = lease
        self.controller = controller
        self.metrics = metrics
        self.token = config.token.encode()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/v1/nodes", self.nodes)
        r.add_get("/v1/ring", self.ring)
        r.add_get("/v1/rooms/{room}", self.room)
        r.add_get("/v1/events", self.events)
        r.add_get("/v1/rebalance", self.rebalance_progress)
        r.add_get("/v1/sd/prometheus", self.prometheus_sd)
        r.add_post("/v1/nodes/{id}/drain", self._mutation(self.drain))
        r.add_post("/v1/nodes/{id}/undrain", self._mutation(self.undrain))
        r.add_post("/v1/rebalance", self._mutation(self.rebalance))
        r.add_delete("/v1/nodes/{id}", self._mutation(self.forget))
        return app

    # --- cross-cutting ------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = error(exc.status, "NOT_FOUND" if exc.status == 404 else "BAD_REQUEST", exc.reason)
        except (RedisError, OSError) as exc:
            log.warning("Redis unavailable while serving %s: %s", route, exc)
            response = error(503, "REDIS_UNAVAILABLE", f"the control plane cannot reach Redis: {exc}")
        self.metrics.api_requests.labels(route, str(response.status)).inc()
        return response

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if not self.token or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self.token)

    def _mutation(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                return web.json_response(
                    {"error": "UNAUTHORIZED", "message": "send Authorization: Bearer <admin token>"},
                    status=401, headers={"WWW-Authenticate": "Bearer"},
                )
            if not self.lease.is_leader:
                leader = await self.lease.holder()
                if leader is None:
                    return error(503, "NO_LEADER", "no replica holds the leader lease right now; retry shortly",
                                 leader=None)
                return error(409, "NOT_LEADER", f"mutations go to the leader {leader['id']} at {leader['url']}",
                             leader=leader)
            try:
                return await handler(request)
            except UnknownNode as exc:
                return error(404, "NODE_NOT_FOUND", f"no node {exc.args[0]!r} is known to the control plane")
            except NodeStillAlive as exc:
                return error(409, "NODE_ALIVE", f"node {exc.args[0]!r} is still heartbeating; stop it before removing it")
            except NotLeader:
                return error(503, "NO_LEADER", "the leader lease was lost during the request; retry", leader=None)
        return guarded

    async def _body(self, request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(reason="the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason="the body must be a JSON object")
        return body

    @staticmethod
    def _seconds(body: dict, name: str, default: float) -> float:
        value = body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise web.HTTPBadRequest(reason=f"{name} must be a number of seconds >= 0")
        return float(value)

    # --- reads (any replica) ------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        body = {"ok": True, "replica": self.config.name, "leader": self.lease.is_leader}
        try:
            body["leaderReplica"] = await self.lease.holder()
            body["redisConnected"] = True
        except (RedisError, OSError):
            body["redisConnected"] = False
        self.metrics.leader.set(1 if self.lease.is_leader else 0)
        return web.json_response(body)

    async def metrics_page(self, request: web.Request) -> web.Response:
        self.metrics.leader.set(1 if self.lease.is_leader else 0)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def nodes(self, request: web.Request) -> web.Response:
        snap = await self.store.snapshot()
        rows = []
        for node_id in sorted(set(snap.records) | set(snap.heartbeats)):
            record = snap.records.get(node_id)
            beat = snap.heartbeats.get(node_id)
            seen = snap.seen_ms.get(node_id)
            rows.append({
                "id": node_id,
                "url": record.url if record else beat.url if beat else None,
                "address": worker_address(record, beat),
                "health": record.health if record else "unknown",
                "desired": record.desired if record else None,
                "state": beat.state if beat else None,
                "inRing": node_id in snap.ring,
                "holdUntilMs": record.hold_until_ms if record else 0,
                "lastSeenAgoMs": snap.now_ms - seen if seen is not None else None,
                "connections": beat.connections if beat else None,
                "rooms": beat.rooms if beat else None,
                "cpuPercent": beat.cpu_percent if beat else None,
                "rssBytes": beat.rss_bytes if beat else None,
                "pid": beat.pid if beat else None,
                "steering": beat.steering.to_dict() if beat and beat.steering else None,
            })
        self.metrics.observe(snap.ring, snap.records)
        return web.json_response({"ringEpoch": snap.ring.epoch, "nodes": rows})

    async def ring(self, request: web.Request) -> web.Response:
        return web.json_response((await self.store.ring()).to_dict())

    async def room(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        snap = await self.store.snapshot()
        try:
            owner = snap.ring.route(room).to_dict()
        except EmptyRing:
            owner = None
        hosts = await self.store.room_hosts(room, sorted(snap.heartbeats))
        return web.json_response({
            "room": room, "ringEpoch": snap.ring.epoch, "owner": owner,
            "hosts": [{"node": node_id, "members": count} for node_id, count in sorted(hosts.items())],
            "members": sum(hosts.values()),
        })

    async def events(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", self.config.max_events_page))
            since = int(request.query.get("since", 0))
        except ValueError:
            return error(400, "BAD_REQUEST", "limit and since are integers")
        limit = max(1, min(limit, self.config.max_events_page))
        return web.json_response({"events": await self.store.events(limit, since)})

    async def rebalance_progress(self, request: web.Request) -> web.Response:
        snap = await self.store.snapshot()
        generation = await self.store.rebalance_generation()
        nodes = []
        for node_id, beat in sorted(snap.heartbeats.items()):
            if beat.steering is not None and beat.steering.kind == "rebalance":
                nodes.append({"node": node_id, **beat.steering.to_dict()})
        current = [n for n in nodes if n["generation"] == generation]
        # Done once a worker has reported this generation and none still runs it.
        done = bool(current) and all(n["done"] for n in current)
        return web.json_response({"generation": generation, "ringEpoch": snap.ring.epoch, "done": done, "nodes": nodes})

    async def prometheus_sd(self, request: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: every worker with a membership record or a heartbeat
        (dead ones too, so `up == 0` alerts on them until `DELETE /v1/nodes/{id}`), every control
        replica and every router that announced itself. `job`, `node`, `worker`, `router`, `replica`
        are target labels (stable for a target's life); what changes (state, health, leadership) is
        `__meta_ringcast_*`, for relabeling only, so a drain or a death does not rename the series
        nor reset an alert's `for:` clock. docs/monitoring.md shows the scrape config."""
        snap = await self.store.snapshot()
        groups = []
        for node_id in sorted(set(snap.records) | set(snap.heartbeats)):
            record = snap.records.get(node_id)
            beat = snap.heartbeats.get(node_id)
            url = record.url if record else beat.url
            # Prometheus scrapes the worker itself, at its internal address, not its public URL
            # (which may be a proxy's); a worker older than the address field: its URL's host:port.
            address = worker_address(record, beat) or scrape_address(url)
            if address is None:
                log.warning("service discovery skips worker %s: no address and no host:port in %r", node_id, url)
                continue
            groups.append(target_group(address, {
                "job": NODE_JOB, "node": address_host(address), "worker": node_id,
                "__meta_ringcast_state": beat.state if beat else "",
                "__meta_ringcast_health": record.health if record else "unknown",
                "__meta_ringcast_desired": record.desired if record else "",
                "__meta_ringcast_in_ring": "true" if node_id in snap.ring else "false",
            }))
        leader = await self.lease.holder()
        replicas = {entry["id"]: entry["url"] for entry in await self.store.control_replicas()}
        if leader is not None:
            replicas.setdefault(leader["id"], leader["url"])  # a leader that has not announced yet
        for replica_id, url in sorted(replicas.items()):
            address = scrape_address(url)
            if address is not None:
                is_leader = leader is not None and leader["id"] == replica_id
                groups.append(target_group(address, {
                    "job": CONTROL_JOB, "replica": replica_id,
                    "__meta_ringcast_leader": "true" if is_leader else "false",
                }))
        for entry in await self.store.routers():
            address = scrape_address(entry["url"])
            if address is not None:
                groups.append(target_group(address, {"job": ROUTER_JOB, "router": entry["id"]}))
        return web.json_response(groups)

    # --- mutations (leader only, bearer token) -------------------------------------------

    async def drain(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        window_s = self._seconds(body, "windowS", self.config.drain_window_s)
        timeout_s = self._seconds(body, "timeoutS", self.config.drain_timeout_s)
        result = await self.controller.drain(request.match_info["id"], window_s, timeout_s)
        return web.json_response(result, status=202)

    async def undrain(self, request: web.Request) -> web.Response:
        return web.json_response(await self.controller.undrain(request.match_info["id"]), status=202)

    async def rebalance(self, request: web.Request) -> web.Response:
        return web.json_response(await self.controller.rebalance(), status=202)

    async def forget(self, request: web.Request) -> web.Response:
        return web.json_response(await self.controller.forget(request.match_info["id"]))
