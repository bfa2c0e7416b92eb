"""One worker: a shard that holds WebSocket connections and hosts rooms.

Owns the aiohttp application (`/healthz`, `/readyz`, `/metrics`, the HTTP
API, and `/ws` for an upgrade on a kept-alive connection), admission and the
upgrade (per-IP and per-worker caps, before any socket is spent; the
client's address behind a trusted proxy is `node.client_address`'s answer),
what happens to each message a connection's endpoint (`node.ws_server`)
reads (every frame, ping and pong included, costs a rate-limit token; then a
data frame goes to `node.session`), the close policy (flood, slow consumer, expired token,
silent peer), the heartbeat sweep, the worker's lifecycle (start, cleanup,
graceful shutdown) and its state: `drain`, `undrain` and `rebalance` are the
only ways in and out of `active` apart from shutdown, whoever asks for them
(the control plane's commands arrive through `node.heartbeat`).

It moves bytes and calls the pure protocol module: it does not decode frames
or run their commands (the session does), does not index rooms (the hub
does), does not talk to Redis (the bus does) and does not choose its bus or
start its process (`node.launch` does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.keys import ACTIVE, DRAINED, DRAINING, SHUTTING_DOWN
from common.tasks import stop_tasks
from node import frames, protocol, proxy_protocol, steering, ws_handshake
from node.admission import Admission, Refusal
from node.auth import Identity
from node.bus import Bus
from node.client_address import client_address, limit_key, parse_trusted_proxies
from node.config import NodeConfig
from node.connection import Connection
from node.heartbeat import HeartbeatReporter
from node.hub import Hub
from node.http_api import HttpApi
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.placement import Placement
from node.presence import Presence, PresenceDisabled
from node.ratelimit import TokenBucket, UserBuckets
from node.session import Sessions
from node.ws_handshake import RequestHead
from node.ws_reader import FrameError
from node.ws_server import FrontDoor, WebSocketEndpoint

log = logging.getLogger("ringcast.worker")

SWEEP_INTERVAL_S = 1.0  # heartbeat/sampling sweep period; per-connection timers would cost memory
SLOW_CONSUMER_GRACE_S = 1.0  # a slow consumer's 1013 close frame has this long to drain before the cut
FLOOD_CLOSE_GRACE_S = 1.0  # a flooder has this long to answer its 1008 (what it still sends is dropped) before the cut


@dataclass(frozen=True)
class UpgradeRefused:
    """An upgrade `_admit` refused: the HTTP answer to write."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class UpgradeAdmitted:
    """An upgrade `_admit` let in: who it is (`client` for logs, `ip` the per-IP limits' key)."""

    client: str
    ip: str
    identity: Identity | None


class Worker:
    def __init__(self, config: NodeConfig, bus: Bus, restarts: int = 0) -> None:
        self.config = config
        self.worker_id = config.shard_id
        self.metrics = NodeMetrics(self.worker_id)
        self.metrics.restarts.set(restarts)
        self.bus = bus
        self.placement = Placement(config)
        self.state = ACTIVE  # changed only here: drain, undrain, shutdown
        self.connections: dict[str, Connection] = {}
        # A bad CIDR fails here, at start, not on the first request (NodeConfig.validate checks it too).
        self.trusted_proxies = parse_trusted_proxies(config.trusted_proxies)
        self.admission = Admission(
            allowed_origins=tuple(config.allowed_origins),
            max_connections_per_ip=config.max_connections_per_ip,
            accept_rate_per_s=config.accept_rate_per_s,
            accept_burst=config.accept_burst,
            verifier=config.token_verifier(),
            now=time.monotonic(),
            refused_rate_per_s=config.ip_refused_upgrade_rate_per_s,
            refused_burst=config.ip_refused_upgrade_burst,
            refused_max_ips=config.ip_refused_upgrade_max_ips,
        )
        self.user_buckets = UserBuckets(
            config.user_message_rate_per_s, config.user_message_burst, config.max_idle_user_buckets
        )
        self.outbox: Outbox | None = None
        self.hub: Hub | None = None
        self.sessions: Sessions | None = None
        self.presence: Presence | None = None  # who is in the opted-in rooms (node.presence); set at startup
        self._background: list[asyncio.Task] = []
        self._detached: set[asyncio.Future] = set()  # fire-and-forget work, referenced until done
        self._bus_was_lost = False
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task | None = None
        self.heartbeat: HeartbeatReporter | None = None  # reports to the control plane, follows its commands
        self._loop: asyncio.AbstractEventLoop | None = None  # set at startup

    @property
    def accepting(self) -> bool:
        """Whether new sockets are welcome (`/readyz` 200): only while active."""
        return self.state == ACTIVE

    # --- application ----------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_frame_bytes)
        app.router.add_route("*", "/ws", self.handle_ws)  # not a GET: 405 BAD_UPGRADE (docs/protocol.md)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/metrics", self.handle_metrics)
        self.placement.add_routes(app)
        # POST /v1/publish etc. for backends (docs/api.md); presence is read through the one made at startup.
        HttpApi(self.config, self.bus, self.metrics, presence=self._presence_snapshot).add_routes(app)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _presence_snapshot(self, room: str) -> dict:
        if self.presence is None:
            raise PresenceDisabled(room)
        return await self.presence.snapshot(room)

    async def _on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self.outbox = Outbox(
            self.config.max_outbound_bytes, self._on_slow_consumer, self.config.write_coalesce_ms / 1000,
            self.config.write_hold_max_ms / 1000,
        )
        self.presence = Presence(self.config, self.worker_id, self.outbox)
        self.presence.start()
        self.hub = Hub(self.bus, self.outbox, self.metrics, self.config.max_join_buffer_messages,
                       max_fill_messages=self.config.max_history_page)
        self.sessions = Sessions(
            self.config, self.worker_id, self.bus, self.hub, self.outbox, self.metrics, self.placement,
            verifier=self.admission.verifier, refused_upgrades=self.admission.refused,
            presence=self.presence,
        )
        self.bus.set_handlers(self.hub.deliver, self._on_bus_state)
        await self.bus.start()
        await self.placement.start()
        self._background.append(asyncio.create_task(self._sweep(), name="sweep"))
        self._background.append(asyncio.create_task(self._measure_loop_lag(), name="loop-lag"))
        if self.config.bus in ("redis", "redis-cluster") and self.config.control_heartbeat_interval_s > 0:
            self.heartbeat = HeartbeatReporter(self)
            self._background.append(asyncio.create_task(self.heartbeat.run(), name="control-heartbeat"))
        log.info("worker %s ready on %s:%d (bus=%s)", self.worker_id, self.config.host, self.config.port, self.config.bus)
        if self.admission.verifier is None:
            log.warning(
                "AUTH IS OFF on worker %s: anyone who reaches this port may join and publish to any room; "
                "set --jwt-secret KID=SECRET (or --auth required) in production (docs/security.md)", self.worker_id,
            )

    async def _on_cleanup(self, app: web.Application) -> None:
        await stop_tasks(self._background)
        if self.heartbeat is not None:
            await self.heartbeat.close()
        await self.placement.close()
        if self.presence is not None:
            await self.presence.close()  # removes this worker's members from Redis
        await self.bus.close()

    def _keep(self, future: asyncio.Future) -> None:
        """Hold a reference to detached work so it is not garbage-collected mid-flight."""
        self._detached.add(future)
        future.add_done_callback(self._detached.discard)

    def _on_bus_state(self, connected: bool) -> None:
        self.metrics.bus_connected.set(1 if connected else 0)
        if not connected:
            self._bus_was_lost = True
            return
        self.metrics.bus_reconnects.inc()
        if self._bus_was_lost and self.hub is not None:
            self._bus_was_lost = False
            self._keep(asyncio.ensure_future(self.hub.fill_gaps(self.config.max_history_page)))

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "worker": self.worker_id, "state": self.state, "busConnected": self.bus.connected}
        )

    async def handle_readyz(self, request: web.Request) -> web.Response:
        # Ready only while active AND on the bus: a worker cut off from Redis (or whose subscription
        # died) would accept joins it cannot serve (BUS_UNAVAILABLE), so a proxy or a load balancer
        # polling /readyz must stop sending it new clients. Its connected members are not cut.
        bus_connected = self.bus.connected
        ready = self.accepting and bus_connected
        body = {"ready": ready, "worker": self.worker_id, "state": self.state, "connections": len(self.connections),
                "busConnected": bus_connected}
        return web.json_response(body, status=200 if ready else 503)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- admission and the upgrade ------------------------------------------------------

    def _refusal(self, status: int, reason: str, text: str, retry_after_s: int | None) -> UpgradeRefused:
        """A refused upgrade's answer: its JSON body and headers (counted)."""
        self.metrics.connections_rejected.labels(reason).inc()
        headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="ringcast"'
        return UpgradeRefused(status, json.dumps({"error": reason, "message": text}).encode(), headers)

    async def _admit(self, remote: str | None, head: RequestHead) -> UpgradeAdmitted | UpgradeRefused:
        """Who may upgrade, or the refusal to answer."""
        if not self.accepting:
            return self._refusal(503, "NOT_ACCEPTING", f"worker is {self.state}; ask the router for another", 1)
        # Per-IP limits count the real client (behind a trusted proxy: the one its header names), an IPv6
        # client by its /64; `ip` is that key, `client` the full address for logs.
        client = client_address(
            remote, self.trusted_proxies,
            x_forwarded_for=head.getall("x-forwarded-for"), forwarded=head.getall("forwarded"),
        )
        ip = limit_key(client)
        verifier = self.admission.verifier
        authorization, query_token = head.get("authorization"), head.query_param("token")
        if verifier is not None and self.admission.refused.wait_s(ip, time.monotonic()) == 0:
            # Fetches the issuer's JWKS when the token names a key not yet in hand: awaited, never blocking
            # the loop. An address already refused too often cannot start fetches (admission answers 429).
            await verifier.prepare(authorization, query_token, time.monotonic())
        decision = self.admission.check(
            ip=ip, origin=head.get("origin"), authorization=authorization,
            query_token=query_token, now_monotonic=time.monotonic(), now_unix=time.time(),
        )
        if isinstance(decision, Refusal):
            log.debug("upgrade from %s (peer %s) refused: %s", client, remote, decision.code)
            return self._refusal(decision.status, decision.code, decision.message, decision.retry_after_s)
        return UpgradeAdmitted(client, ip, decision.identity)

    async def upgrade(self, door: FrontDoor, head: RequestHead) -> None:
        """A well-formed upgrade read by the front door: admit it and serve it, or write the refusal."""
        transport = door.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        admitted = await self._admit(str(peer[0]) if isinstance(peer, (tuple, list)) and peer else None, head)
        if door.lost:
            return
        door.settle()
        if isinstance(admitted, UpgradeRefused):
            # Connection: close, and the socket is closed after the answer: a refused client cannot
            # pipeline its next attempts on a kept-alive socket, each one costs it a new connection.
            transport.write(ws_handshake.http_answer(admitted.status, admitted.body, admitted.headers))
            transport.close()
            return
        endpoint = self._open(transport, head, admitted)
        if endpoint is not None:
            endpoint.start(door.take_tail())

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """An upgrade on a connection aiohttp kept alive after an earlier request (or one the front door did
        not find well-formed): the same admission and checks, then the socket is taken from aiohttp."""
        head = ws_handshake.RequestHead(
            request.method, request.path, request.query_string,
            [(name.lower(), value) for name, value in request.headers.items()],
            f"HTTP/{request.version.major}.{request.version.minor}",
        )
        admitted = await self._admit(request.remote, head)
        if isinstance(admitted, UpgradeRefused):
            response = web.Response(body=admitted.body, status=admitted.status, headers=admitted.headers,
                                    content_type="application/json")
            response.force_close()
            return response
        try:
            ws_handshake.check_upgrade(head)
        except ws_handshake.HandshakeError as exc:
            headers = {"Sec-WebSocket-Version": "13"} if exc.status == 426 else {}
            return web.json_response({"error": "BAD_UPGRADE", "message": exc.message}, status=exc.status,
                                     headers=headers)
        transport = request.transport
        if transport is None:
            return web.Response(status=400)
        endpoint = self._open(transport, head, admitted)
        if endpoint is not None:
            # What aiohttp read after the upgrade request (frames a client sent before the 101) is in its
            # protocol's message tail: an aiohttp internal, read here only.
            await endpoint.take_over(request.protocol, getattr(request.protocol, "_message_tail", b""))
        return web.Response()  # never written: the socket was the endpoint's, and it is gone

    def _open(self, transport: asyncio.Transport, head: RequestHead,
              admitted: UpgradeAdmitted) -> WebSocketEndpoint | None:
        """Answer 101 and open the connection; None when the worker is full (closed with 1013)."""
        subprotocol = ws_handshake.choose_subprotocol(head, protocol.SUBPROTOCOLS)
        transport.write(ws_handshake.switching_protocols(head, subprotocol))
        if len(self.connections) >= self.config.max_connections:
            self.metrics.connections_rejected.labels("WORKER_FULL").inc()
            transport.write(frames.close_frame(protocol.CloseCode.TRY_AGAIN_LATER, "worker full"))
            transport.close()
            return None
        assert self.sessions is not None
        self._tune_socket(transport)
        endpoint = WebSocketEndpoint(self, transport, self.config.max_frame_bytes)
        now = self._loop.time()
        codec = protocol.CODEC_BY_SUBPROTOCOL.get(subprotocol, protocol.JSON)
        conn = Connection(
            secrets.token_hex(8), codec, endpoint, transport, admitted.client,
            TokenBucket(self.config.message_rate_per_s, self.config.message_burst, now), now,
        )
        endpoint.conn = conn
        if admitted.identity is not None:
            conn.identity = admitted.identity
            conn.user_bucket = self.user_buckets.acquire(admitted.identity.user, now)
        self.admission.opened(admitted.ip)
        self.connections[conn.id] = conn
        self.metrics.connections.set(len(self.connections))
        self.metrics.connections_opened.inc()
        self.sessions.begin(conn)
        return endpoint

    def _tune_socket(self, transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.config.socket_send_buffer_bytes:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_send_buffer_bytes)
        except OSError:
            pass

    # --- one connection: its messages -------------------------------------------------

    def on_message(self, endpoint: WebSocketEndpoint, opcode: int, payload: str | bytes) -> Awaitable[None] | None:
        """One message from the client, in order; returns what must be awaited before the next one, if anything.

        Every frame, ping and pong included, costs a rate-limit token."""
        conn = endpoint.conn
        if conn.closed:
            return None  # closing, or a slow consumer still sending: dropped until its socket is cut
        if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
            return self._on_frame(conn, payload)
        if opcode == frames.OP_PING:
            # Control frames cost a token like any frame; a refused ping gets no pong.
            if not self._charge(conn, self._loop.time()):
                self.outbox.push(conn, frames.pong(payload))
        elif opcode == frames.OP_PONG:
            conn.ping_sent_at = None  # alive, whether or not the pong fits the budget
            self._charge(conn, self._loop.time())
        return None

    def on_frame_error(self, endpoint: WebSocketEndpoint, error: FrameError) -> None:
        """The client broke the framing rules: what was queued goes out, then the endpoint closes with the error's code."""
        conn = endpoint.conn
        if conn.closed:
            return
        self.outbox.flush_one(conn)
        conn.close_reason = "too_big" if error.close_code == protocol.CloseCode.MESSAGE_TOO_BIG else "error"
        conn.closed = True

    def on_closed(self, endpoint: WebSocketEndpoint) -> None:
        """The socket is gone: the connection leaves every room and stops counting."""
        conn = endpoint.conn
        conn.closed = True
        assert self.sessions is not None
        self.sessions.end(conn)
        if conn.identity is not None:
            self.user_buckets.release(conn.identity.user)
        self.connections.pop(conn.id, None)
        self.admission.closed(limit_key(conn.ip))
        self.metrics.connections.set(len(self.connections))
        self.metrics.connections_closed.labels(conn.close_reason).inc()

    def _charge(self, conn: Connection, now: float) -> float:
        """Charge one client frame, data or control, to its connection's bucket (and its user's).

        Returns 0.0 when the frame may be served, else the seconds until a token
        is available. A refused frame is counted; the `flood_close_after_rejections`-th
        refusal in a row closes the connection with 1008.
        """
        wait_s = conn.bucket.take(now)
        if not wait_s and conn.user_bucket is not None:
            wait_s = conn.user_bucket.take(now)  # one user's connections share one budget
        if not wait_s:
            conn.rejections = 0
            return 0.0
        conn.rejections += 1
        self.metrics.rate_limited.inc()
        if conn.rejections >= self.config.flood_close_after_rejections:
            self._close(conn, protocol.CloseCode.POLICY_VIOLATION, "flooding", "flood", FLOOD_CLOSE_GRACE_S)
        return wait_s

    def _on_frame(self, conn: Connection, data: str | bytes) -> Awaitable[None] | None:
        """Rate-limit one client frame, then hand it to the session."""
        assert self.sessions is not None
        started = self._loop.time()
        wait_s = self._charge(conn, started)
        if wait_s:
            if not conn.closed:
                self.sessions.send_error(conn, protocol.ErrorCode.RATE_LIMIT_EXCEEDED, "slow down", None, wait_s)
            return None
        conn.ping_sent_at = None  # any frame proves the peer is alive
        pending = self.sessions.handle(conn, data)
        if pending is None:
            self.metrics.message_handling.observe(self._loop.time() - started)
            return None
        return self._finish_frame(pending, started)

    async def _finish_frame(self, pending: Awaitable[None], started: float) -> None:
        await pending
        self.metrics.message_handling.observe(self._loop.time() - started)

    # --- close policy -------------------------------------------------------------------

    def _close(self, conn: Connection, code: int, message: str, reason: str, grace_s: float | None = None) -> None:
        """Flush what is queued, then close with `code` (close frame last); the socket is cut after
        `grace_s` (default: heartbeat_timeout_s) if the peer has not answered the close by then."""
        if conn.closed:
            return
        assert self.outbox is not None
        self.outbox.flush_one(conn)
        conn.close_reason = reason
        conn.closed = True
        conn.ws.close(code, message, self.config.heartbeat_timeout_s if grace_s is None else grace_s)

    def _on_slow_consumer(self, conn, buffered: int) -> None:
        self.metrics.slow_consumer_disconnects.inc()
        log.info("closing slow consumer %s: %d bytes buffered", conn.id, buffered)
        conn.close_reason = "slow_consumer"
        conn.closed = True
        # The close frame queues behind everything the reader has not taken; if the
        # buffer has not drained within the grace period, the socket is cut (even if
        # the peer answered the close), so the memory it holds stays bounded in bytes and in time.
        conn.ws.close(protocol.CloseCode.TRY_AGAIN_LATER, "slow consumer", SLOW_CONSUMER_GRACE_S)

    def steer_notice(self, conn: Connection, frame: dict) -> None:
        """Send one `reconnect` notice, then close the socket with 1001 (notice first, close frame last)."""
        assert self.outbox is not None
        self.outbox.push(conn, conn.frame(frame))
        self._close(conn, protocol.CloseCode.GOING_AWAY, frame["reason"], frame["reason"])

    def _cut_all(self) -> None:
        for conn in list(self.connections.values()):
            conn.transport.abort()

    # --- periodic work ------------------------------------------------------------

    async def _sweep(self) -> None:
        """Ping idle peers, terminate silent ones, sample buffered bytes; one pass per second."""
        loop = asyncio.get_running_loop()
        interval = self.config.heartbeat_interval_s
        timeout = self.config.heartbeat_timeout_s
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL_S, interval, timeout))
            now = loop.time()
            wall_s = time.time()
            buffered = 0
            assert self.outbox is not None
            for conn in list(self.connections.values()):
                if conn.closed:
                    continue
                if conn.identity is not None and wall_s >= conn.identity.expires_at:
                    # A token is checked at the upgrade; without this a connection would outlive it forever.
                    self._close(conn, protocol.CloseCode.TOKEN_EXPIRED, "token expired", "token_expired")
                    continue
                if conn.ping_sent_at is not None:
                    if now - conn.ping_sent_at > timeout:
                        conn.close_reason = "heartbeat_timeout"
                        conn.closed = True
                        conn.transport.abort()
                        continue
                elif now - conn.last_ping_at >= interval:
                    conn.ping_sent_at = now
                    conn.last_ping_at = now
                    self.outbox.push(conn, frames.PING)
                buffered += conn.transport.get_write_buffer_size()
            self.metrics.outbound_buffer.set(buffered)

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        period = 0.25
        while True:
            expected = loop.time() + period
            await asyncio.sleep(period)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - expected))

    # --- state: drain, undrain, rebalance -----------------------------------------------

    async def drain(
        self, *, ring_epoch: int, window_s: float, timeout_s: float, progress: steering.SteeringProgress
    ) -> None:
        """active -> draining -> drained: refuse new sockets, steer every client to its room's owner in the
        ring without this worker (published with `ring_epoch`), and wait until none is left; those left at
        `timeout_s` are cut. Does nothing unless active."""
        if not self.accepting:
            return
        me = self.worker_id
        self.state = DRAINING  # from here /readyz is 503 and upgrades are refused
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        log.info("worker %s draining %d connections", me, len(self.connections))
        # The published ring without this worker; if it is late, the current one minus this worker.
        published = await steering.ring_at_least(lambda: self.placement.ring, ring_epoch)
        ring = steering.successor_ring(published if published is not None else self.placement.ring, me)
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await steering.steer_away(
                    list(self.connections.values()), reason="drain", window_s=window_s,
                    max_rate_per_s=self.config.steer_max_rate_per_s, jitter_ms=self.config.reconnect_jitter_ms,
                    target_url=steering.owners_in(ring, me), notify=self.steer_notice, progress=progress,
                )
                while self.connections:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("worker %s: drain deadline reached with %d connections; cutting them", me, len(self.connections))
            self._cut_all()
        progress.finished_at_ms = progress.finished_at_ms or int(time.time() * 1000)
        self.state = DRAINED
        log.info("worker %s drained", me)

    def undrain(self) -> bool:
        """draining or drained -> active: accept connections again. False (and no change) from any other state.

        A drain still running must be cancelled by whoever started it."""
        if self.state not in (DRAINING, DRAINED):
            return False
        self.state = ACTIVE
        log.info("worker %s undrained: accepting connections again", self.worker_id)
        return True

    async def rebalance(self, *, ring_epoch: int, window_s: float, progress: steering.SteeringProgress) -> None:
        """Stay active; steer away the clients none of whose rooms this worker owns in the ring of
        `ring_epoch`, each to the owner of its (first) room."""
        me = self.worker_id
        ring = await steering.ring_at_least(lambda: self.placement.ring, ring_epoch)
        if ring is None or me not in ring:
            progress.finished_at_ms = int(time.time() * 1000)
            return  # not placed (or no ring): nothing this worker owns can be said to have moved
        # A connection moves only when none of its rooms is owned here any more.
        movers = [
            conn for conn in self.connections.values()
            if conn.rooms and not conn.closed and all(ring.owner_id(room) != me for room in conn.rooms)
        ]
        log.info("worker %s rebalance %d: %d connections to move (ring epoch %d)",
                 me, progress.generation, len(movers), ring.epoch)
        await steering.steer_away(
            movers, reason="rebalance", window_s=window_s,
            max_rate_per_s=self.config.steer_max_rate_per_s, jitter_ms=self.config.reconnect_jitter_ms,
            target_url=steering.owners_in(ring, me), notify=self.steer_notice, progress=progress,
        )

    # --- shutdown -----------------------------------------------------------------

    def begin_shutdown(self) -> None:
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self.shutdown())

    async def shutdown(self) -> None:
        """Refuse new sockets, steer clients away over the window, wait, then stop."""
        self.state = SHUTTING_DOWN
        if self.heartbeat is not None:
            self.heartbeat.stop_following()  # a drain or rebalance in progress must not steer the same clients
        conns = list(self.connections.values())
        log.info("worker %s shutting down: %d connections to steer away", self.worker_id, len(conns))
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Each client is pointed at its room's owner once this worker has left the ring: the current ring
        # without it, computed once. Only a worker that reports to a control plane names a target (no url
        # without a ring).
        me = self.worker_id
        successor = steering.successor_ring(self.placement.ring, me) if self.heartbeat is not None else None
        # No rate cap here: the process is leaving, the window is the only pace that fits its deadline.
        await steering.steer_away(
            conns, reason="shutdown", window_s=self.config.shutdown_window_s, max_rate_per_s=None,
            jitter_ms=self.config.reconnect_jitter_ms, target_url=steering.owners_in(successor, me),
            notify=self.steer_notice, progress=steering.SteeringProgress("shutdown"),
        )
        deadline = started + self.config.shutdown_timeout_s
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.connections:
            log.warning("worker %s: %d connections left at the deadline; cutting them", self.worker_id, len(self.connections))
            self._cut_all()
        self._stopped.set()

    async def listen(self, runner: web.AppRunner) -> Callable[[], None]:
        """Open the worker's listening socket for a set-up runner; returns what stops listening.

        Every connection starts at `node.ws_server`'s front door (upgrades on /ws are served by the
        worker, the rest by aiohttp's `runner.server`). With --proxy-protocol, connections from trusted
        proxies first pass through `node.proxy_protocol`'s gate (PROXY v2 header first).
        """
        config = self.config

        def front_door() -> FrontDoor:
            return FrontDoor(self, runner.server, config.handshake_timeout_s, config.max_http_header_bytes)

        if config.proxy_protocol:
            server = await proxy_protocol.listen(
                front_door, config.host, config.port, trusted=self.trusted_proxies,
                header_timeout_s=config.handshake_timeout_s, backlog=config.listen_backlog,
            )
        else:
            server = await asyncio.get_running_loop().create_server(
                front_door, config.host, config.port, backlog=config.listen_backlog, reuse_address=True,
            )
        return server.close

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down gracefully."""
        runner = web.AppRunner(
            self.app(), handle_signals=False, access_log=None, shutdown_timeout=1.0,
            # aiohttp arms keepalive_timeout at accept and only a complete request disarms it:
            # it is the header-read (slowloris) timeout. Upgraded sockets are not affected.
            keepalive_timeout=self.config.handshake_timeout_s,
            max_line_size=self.config.max_http_header_bytes, max_field_size=self.config.max_http_header_bytes,
        )
        await runner.setup()
        stop_listening = await self.listen(runner)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_shutdown)
        await self._stopped.wait()
        stop_listening()
        await runner.cleanup()
        log.info("worker %s stopped", self.worker_id)
