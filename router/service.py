"""The route service: `ringcast router`, a stateless HTTP answer to "where does room R live?".

Owns the aiohttp application of one router process: `GET /route?room=R`,
`GET /ring`, `GET /healthz`, `GET /metrics`, CORS preflight, the HTTP API for
backends forwarded to workers (`router.api_forward`), the demo chat page and
the browser client (`router.demo`), and following
the ring through a `RingSource`. Answers themselves are `router.answers`;
placement is `router.ring`; metric names are `router.metrics`. With --redis
it also announces itself in the `routers` presence hash (`common.presence`)
so the control plane's service discovery lists it. It keeps no state but its
copy of the ring (and its counters), so any number of routers can run side by
side. It must not hold WebSockets or publish rings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.keys import Keys
from common.presence import Presence
from common.redis_connect import RedisTarget
from common.tasks import stop_tasks
from router import answers, demo
from router.api_forward import ApiForwarder
from router.config import RouterConfig
from router.membership import RedisRingSource, RingSource, make_ring_source
from router.metrics import RouterMetrics

log = logging.getLogger("ringcast.router")


def respond(answer: answers.Answer) -> web.Response:
    status, body, headers = answer
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json",
        headers={**answers.CORS_HEADERS, **headers},
    )


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=answers.CORS_HEADERS)


class RouteService:
    def __init__(self, config: RouterConfig, source: RingSource | None = None) -> None:
        self.config = config
        self.source = source or make_ring_source(
            RedisTarget.from_settings(config) if config.redis else "", config.nodes, config.key_prefix,
            config.ring_poll_interval_s, config.redis_timeout_s
        )
        if self.source is None:
            raise ValueError("the route service needs --redis or --nodes")
        self.metrics = RouterMetrics()
        self._presence_redis = None
        self._presence: Presence | None = None
        self._presence_task: asyncio.Task | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.api_max_body_bytes)
        app.router.add_get("/route", self.handle_route)
        app.router.add_get("/ring", self.handle_ring)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/metrics", self.handle_metrics)
        # The HTTP API for backends, forwarded to the room's owner (router.api_forward, docs/api.md).
        ApiForwarder(lambda: self.source.ring, self.config.api_max_body_bytes,
                     self.config.api_forward_timeout_s).add_routes(app)
        demo.add_routes(app)  # the demo chat page at /demo/ and the browser client (router.demo)
        app.router.add_route("OPTIONS", "/{tail:.*}", preflight)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        await self.source.start()
        if self.config.redis:
            target = RedisTarget.from_settings(self.config)  # on redis+cluster://, a RedisCluster client and tagged keys
            self._presence_redis = target.client(timeout_s=self.config.redis_timeout_s)
            self._presence = Presence(self._presence_redis, Keys(self.config.key_prefix, cluster=target.cluster).routers, self.config.name,
                                      self.config.url, self.config.presence_ttl_s)
            self._presence_task = asyncio.create_task(self._announce_forever(), name="router-presence")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._presence_task is not None:
            await stop_tasks([self._presence_task])  # re-cancels: redis-py can swallow a cancellation
        if self._presence is not None:
            try:
                await self._presence.withdraw()  # leave service discovery now, not when the entry expires
            except Exception as exc:  # noqa: BLE001 - the entry expires on its own
                log.warning("could not withdraw from the routers presence hash: %s", exc)
        if self._presence_redis is not None:
            await self._presence_redis.aclose()
        await self.source.close()

    async def _announce_forever(self) -> None:
        """Keep this router's presence entry fresh; Redis trouble only delays it (the route service goes on)."""
        assert self._presence is not None
        failing = False
        while True:
            try:
                await self._presence.announce()
                failing = False
            except Exception as exc:  # noqa: BLE001 - discovery is best effort; answering routes is not
                if not failing:
                    log.warning("cannot announce this router in Redis (%s); retrying", exc)
                failing = True
            await asyncio.sleep(self.config.presence_ttl_s / 3)

    async def handle_route(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = respond(answers.route(self.source.ring, request.query.get("room"), self.config.max_room_name_chars))
        self.metrics.answered(response.status, time.perf_counter() - started)
        return response

    async def handle_ring(self, request: web.Request) -> web.Response:
        return respond(answers.ring_view(self.source.ring))

    async def handle_healthz(self, request: web.Request) -> web.Response:
        ring = self.source.ring
        body = {"ok": True, "epoch": ring.epoch, "members": len(ring)}
        if isinstance(self.source, RedisRingSource):
            body["redisReachable"] = self.source.redis_reachable
        return respond((200, body, {}))

    async def handle_metrics(self, request: web.Request) -> web.Response:
        reachable = self.source.redis_reachable if isinstance(self.source, RedisRingSource) else True
        self.metrics.observe(self.source.ring, reachable)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, backlog=self.config.listen_backlog, reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("router ready on %s:%d (ring epoch %d, %d members)",
                 self.config.host, self.config.port, self.source.ring.epoch, len(self.source.ring))
        await stop.wait()
        await runner.cleanup()
        log.info("router stopped")
