"""One worker process: a shard that holds WebSocket connections and hosts rooms.

Owns the aiohttp application (`/ws`, `/healthz`, `/readyz`, `/metrics`), the
per-connection read loop, admission (per-IP and per-worker caps), the
heartbeat sweep, and graceful shutdown. It moves bytes and calls the pure
protocol module; it does not parse or encode frames itself, does not index
rooms (the hub does) and does not talk to Redis (the bus does).

Run by the supervisor as `python -m node.worker CONFIG_JSON`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.tasks import stop_tasks
from node import envelope, frames, protocol, steering
from node.admission import Admission, Refusal
from node.auth import Identity, TokenVerifier
from node.bus import LATEST, POSITION_ONLY, Bus, BusUnavailable, PublishUnconfirmed
from node.bus_global import GlobalBroadcastBus
from node.bus_memory import MemoryBus
from node.bus_redis import RedisBus, RedisBusSettings
from node.config import NodeConfig
from node.connection import Connection
from node.heartbeat import HeartbeatReporter
from node.history import recovery_outcome
from node.hub import Hub
from common.logs import setup_logging
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.placement import Placement
from node.ratelimit import TokenBucket, UserBuckets

log = logging.getLogger("ringcast.worker")

ACTIVE = "active"
DRAINING = "draining"
SHUTTING_DOWN = "shutting_down"

RESTARTS_ENV = "RINGCAST_WORKER_RESTARTS"  # set by the supervisor for each (re)start
SECRETS_ENV = "RINGCAST_WORKER_JWT_SECRETS"  # the supervisor hands the signing keys over here, not in argv
SWEEP_INTERVAL_S = 1.0
SLOW_CONSUMER_GRACE_S = 1.0  # a slow consumer's 1013 close frame has this long to drain before the cut  # heartbeat/sampling sweep period; per-connection timers would cost memory


def make_bus(config: NodeConfig) -> Bus:
    rules = config.history_rules()
    if config.bus == "memory":
        return MemoryBus(rules.policy_for)
    bus_class = GlobalBroadcastBus if config.bus == "global" else RedisBus
    return bus_class(
        RedisBusSettings(
            url=config.redis,
            channel_prefix=config.channel_prefix,
            key_prefix=config.key_prefix,
            timeout_s=config.bus_timeout_s,
            reconnect_base_s=config.bus_reconnect_base_s,
            reconnect_cap_s=config.bus_reconnect_cap_s,
            room_state_ttl_s=config.room_state_ttl_s,
            policy_for=rules.policy_for,
            max_connections=config.bus_max_connections,
        )
    )


class Worker:
    def __init__(self, config: NodeConfig, bus: Bus | None = None) -> None:
        self.config = config
        self.worker_id = config.shard_id
        self.metrics = NodeMetrics(self.worker_id)
        self.metrics.restarts.set(int(os.environ.get(RESTARTS_ENV, "0") or 0))
        self.bus = bus if bus is not None else make_bus(config)
        self.history_rules = config.history_rules()
        self.decoder = protocol.Decoder(
            protocol.ProtocolLimits(
                max_room_name_chars=config.max_room_name_chars,
                max_json_depth=config.max_json_depth,
                max_frame_bytes=config.max_frame_bytes,
            )
        )
        self.placement = Placement(config)
        self.state = ACTIVE
        self.connections: dict[str, Connection] = {}
        self.admission = Admission(
            allowed_origins=tuple(config.allowed_origins),
            max_connections_per_ip=config.max_connections_per_ip,
            accept_rate_per_s=config.accept_rate_per_s,
            accept_burst=config.accept_burst,
            verifier=TokenVerifier(config.token_keys(), config.jwt_leeway_s) if config.auth_enabled else None,
            now=time.monotonic(),
        )
        self.user_buckets = UserBuckets(
            config.user_message_rate_per_s, config.user_message_burst, config.max_idle_user_buckets
        )
        self.outbox: Outbox | None = None
        self.hub: Hub | None = None
        self._background: list[asyncio.Task] = []
        self._detached: set[asyncio.Future] = set()  # fire-and-forget work, referenced until done
        self._bus_was_lost = False
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task | None = None
        self.heartbeat: HeartbeatReporter | None = None  # reports to the control plane, follows its commands
        self.limits = {
            "maxFrameBytes": config.max_frame_bytes,
            "maxMessageBytes": config.max_message_bytes,
            "maxRoomsPerConnection": config.max_rooms_per_connection,
            "maxRoomNameChars": config.max_room_name_chars,
            "messageRatePerS": config.message_rate_per_s,
            "messageBurst": config.message_burst,
            "heartbeatIntervalS": config.heartbeat_interval_s,
            "heartbeatTimeoutS": config.heartbeat_timeout_s,
        }

    # --- application ----------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_frame_bytes)
        app.router.add_get("/ws", self.handle_ws)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/metrics", self.handle_metrics)
        self.placement.add_routes(app)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self.outbox = Outbox(
            self.config.max_outbound_bytes, self._on_slow_consumer, self.config.write_coalesce_ms / 1000
        )
        self.hub = Hub(self.bus, self.outbox, self.metrics, self.config.max_join_buffer_messages)
        self.bus.set_handlers(self.hub.deliver, self._on_bus_state)
        await self.bus.start()
        await self.placement.start()
        self._background.append(asyncio.create_task(self._sweep(), name="sweep"))
        self._background.append(asyncio.create_task(self._measure_loop_lag(), name="loop-lag"))
        if self.config.bus == "redis" and self.config.control_heartbeat_interval_s > 0:
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
        ready = self.state == ACTIVE
        body = {"ready": ready, "worker": self.worker_id, "state": self.state, "connections": len(self.connections)}
        return web.json_response(body, status=200 if ready else 503)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- admission --------------------------------------------------------------

    def _refuse(self, status: int, reason: str, text: str, retry_after_s: int | None) -> web.Response:
        self.metrics.connections_rejected.labels(reason).inc()
        headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="ringcast"'
        return web.json_response({"error": reason, "message": text}, status=status, headers=headers)

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        if self.state != ACTIVE:
            return self._refuse(503, "NOT_ACCEPTING", f"worker is {self.state}; ask the router for another", 1)
        ip = request.remote or "unknown"
        decision = self.admission.check(
            ip=ip, origin=request.headers.get("Origin"), authorization=request.headers.get("Authorization"),
            query_token=request.query.get("token"), now_monotonic=time.monotonic(), now_unix=time.time(),
        )
        if isinstance(decision, Refusal):
            return self._refuse(decision.status, decision.code, decision.message, decision.retry_after_s)
        transport = request.transport
        if transport is None:
            return web.Response(status=400)
        ws = web.WebSocketResponse(
            protocols=protocol.SUBPROTOCOLS,
            compress=False,  # permessage-deflate costs CPU per member and opens decompression bombs
            max_msg_size=self.config.max_frame_bytes + 1,  # aiohttp refuses a payload >= max_msg_size
            autoping=False,  # pings and pongs are handled here, cheaply, with pre-built frames
            heartbeat=None,  # one sweep for all connections instead of a timer each
        )
        self.admission.opened(ip)
        try:
            await ws.prepare(request)
            if len(self.connections) >= self.config.max_connections:
                self.metrics.connections_rejected.labels("WORKER_FULL").inc()
                await ws.close(code=protocol.CloseCode.TRY_AGAIN_LATER, message=b"worker full")
                return ws
            await self._serve(ws, transport, ip, decision.identity)
        finally:
            self.admission.closed(ip)
        return ws

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

    # --- one connection -------------------------------------------------------

    async def _serve(self, ws: web.WebSocketResponse, transport: asyncio.Transport, ip: str, identity: Identity | None) -> None:
        assert self.hub is not None and self.outbox is not None
        self._tune_socket(transport)
        loop = asyncio.get_running_loop()
        now = loop.time()
        codec = protocol.CODEC_BY_SUBPROTOCOL.get(ws.ws_protocol, protocol.JSON)
        conn = Connection(
            secrets.token_hex(8), codec, ws, transport, ip,
            TokenBucket(self.config.message_rate_per_s, self.config.message_burst, now), now,
        )
        if identity is not None:
            conn.identity = identity
            conn.user_bucket = self.user_buckets.acquire(identity.user, now)
        self.connections[conn.id] = conn
        self.metrics.connections.set(len(self.connections))
        self.metrics.connections_opened.inc()
        self.outbox.push(conn, conn.frame(protocol.welcome(conn.id, self.worker_id, self.limits)))
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    if conn.closed:
                        break
                    await self._on_frame(conn, msg.data, loop)
                elif kind is WSMsgType.PING:
                    self.outbox.push(conn, frames.pong(msg.data))
                elif kind is WSMsgType.PONG:
                    conn.ping_sent_at = None
                elif kind is WSMsgType.ERROR:
                    # msg.data is aiohttp's WebSocketError; ws.close_code is by now the code the peer echoed back.
                    too_big = getattr(msg.data, "code", None) == protocol.CloseCode.MESSAGE_TOO_BIG
                    conn.close_reason = "too_big" if too_big else "error"
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
        finally:
            conn.closed = True
            self.hub.leave_all(conn)
            if conn.identity is not None:
                self.user_buckets.release(conn.identity.user)
            self.connections.pop(conn.id, None)
            self.metrics.connections.set(len(self.connections))
            self.metrics.connections_closed.labels(conn.close_reason).inc()
            if not ws.closed:
                transport.abort()

    async def _on_frame(self, conn: Connection, data: str | bytes, loop: asyncio.AbstractEventLoop) -> None:
        started = loop.time()
        wait_s = conn.bucket.take(started)
        if not wait_s and conn.user_bucket is not None:
            wait_s = conn.user_bucket.take(started)  # one user's connections share one budget
        if wait_s:
            conn.rejections += 1
            self.metrics.rate_limited.inc()
            if conn.rejections >= self.config.flood_close_after_rejections:
                self._close(conn, protocol.CloseCode.POLICY_VIOLATION, "flooding", "flood")
                return
            self._send_error(conn, protocol.ErrorCode.RATE_LIMIT_EXCEEDED, "slow down", None, wait_s)
            return
        conn.rejections = 0
        conn.ping_sent_at = None  # any frame proves the peer is alive
        request_id: protocol.RequestId | None = None
        try:
            frame = self.decoder.decode(data, conn.codec)
            request_id = frame.request_id  # a client waiting for its reply gets one even when we fail
            self.metrics.messages_received.labels(type(frame).__name__.lower()).inc()
            if isinstance(frame, protocol.Publish):
                await self._publish(conn, frame)
            elif isinstance(frame, protocol.Join):
                await self._join(conn, frame)
            elif isinstance(frame, protocol.Leave):
                self._leave(conn, frame)
            elif isinstance(frame, protocol.History):
                await self._history(conn, frame)
            else:
                self.outbox.push(conn, conn.frame(protocol.pong(int(time.time() * 1000), frame.request_id)))
        except protocol.ProtocolError as exc:
            self.metrics.messages_received.labels("invalid").inc()
            self._send_error(conn, exc.code, exc.message, exc.request_id)
        except Exception:
            log.exception("bug while handling a frame on connection %s", conn.id)
            self._send_error(conn, protocol.ErrorCode.INTERNAL_ERROR, "internal error; logged", request_id)
        self.metrics.message_handling.observe(loop.time() - started)

    async def _join(self, conn: Connection, frame: protocol.Join) -> None:
        assert self.hub is not None
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
        since = frame.since
        since_seq, since_epoch = (POSITION_ONLY, "") if since is None else (since.seq, since.epoch)
        try:
            page = await self.hub.join(conn, frame.room, since_seq, since_epoch, self.config.max_history_page)
        except BusUnavailable as exc:
            raise protocol.ProtocolError(protocol.ErrorCode.BUS_UNAVAILABLE, str(exc), frame.request_id) from None
        except ConnectionError:  # the socket went away while joining
            return
        # From here to go_live nothing awaits: joined, the missed messages, then the live stream.
        recovered = reason = None
        if since is not None:
            recovered, reason = recovery_outcome(
                since.seq, since.epoch, page.seq, page.epoch,
                page.messages[0].seq if page.messages else None,
                page.messages[-1].seq if page.messages else None,
                self.history_rules.policy_for(frame.room).size,
            )
            self.metrics.resumes.labels("recovered" if recovered else reason).inc()
        self.outbox.push(
            conn, conn.frame(protocol.joined(frame.room, page.seq, page.epoch, frame.request_id, recovered, reason))
        )
        for message in page.messages:
            missed = self.hub.message_frame(message, conn.binary)
            if missed is not None:
                self.outbox.push(conn, missed)
        self.hub.go_live(conn, frame.room, page.epoch, page.seq)
        hint = self.placement.moved_hint(frame.room)
        if hint is not None:
            self.outbox.push(conn, conn.frame(hint))

    async def _history(self, conn: Connection, frame: protocol.History) -> None:
        assert self.hub is not None
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
            raise protocol.ProtocolError(protocol.ErrorCode.BUS_UNAVAILABLE, str(exc), frame.request_id) from None
        bodies = [body for body in map(self.hub.message_body, page.messages) if body is not None]
        if page.messages:
            complete = page.messages[-1].seq >= page.seq
        else:
            complete = page.seq == 0 or (since is not None and since.epoch == page.epoch and since.seq >= page.seq)
        if not conn.closed:
            self.outbox.push(
                conn, conn.frame(protocol.history(frame.room, page.seq, page.epoch, bodies, complete, frame.request_id))
            )

    def _leave(self, conn: Connection, frame: protocol.Leave) -> None:
        assert self.hub is not None
        if frame.room not in conn.rooms:
            raise protocol.ProtocolError(protocol.ErrorCode.NOT_JOINED, f"not in {frame.room}", frame.request_id)
        self.hub.leave(conn, frame.room)
        self.outbox.push(conn, conn.frame(protocol.left(frame.room, frame.request_id)))

    async def _publish(self, conn: Connection, frame: protocol.Publish) -> None:
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
        try:
            sender = conn.identity.user if conn.identity is not None else conn.id  # members see the token's `sub`
            body = envelope.pack(envelope.Envelope(int(time.time() * 1000), sender, frame.data_key, frame.data))
        except (TypeError, ValueError, OverflowError):
            raise protocol.ProtocolError(
                protocol.ErrorCode.INVALID_MESSAGE_FORMAT, "data holds a value that cannot be delivered", frame.request_id
            ) from None
        if len(body) > self.config.max_message_bytes:
            raise protocol.ProtocolError(
                protocol.ErrorCode.MESSAGE_TOO_LARGE,
                f"message is {len(body)} bytes on the bus; the limit is {self.config.max_message_bytes}",
                frame.request_id,
            )
        started = time.perf_counter()
        try:
            position = await self.bus.publish(room, body)
        except PublishUnconfirmed as exc:
            raise protocol.ProtocolError(protocol.ErrorCode.PUBLISH_UNCONFIRMED, str(exc), frame.request_id) from None
        except BusUnavailable as exc:
            raise protocol.ProtocolError(protocol.ErrorCode.BUS_UNAVAILABLE, str(exc), frame.request_id) from None
        self.metrics.bus_publish.observe(time.perf_counter() - started)
        self.metrics.messages_published.inc()
        if frame.request_id is not None and not conn.closed:
            self.outbox.push(conn, conn.frame(protocol.ack(room, position.seq, position.epoch, frame.request_id)))

    def _send_error(
        self, conn: Connection, code: protocol.ErrorCode, text: str, request_id: protocol.RequestId | None,
        retry_after_s: float | None = None,
    ) -> None:
        assert self.outbox is not None
        self.metrics.errors.labels(code.value).inc()
        self.outbox.push(conn, conn.frame(protocol.error(code, text, request_id, retry_after_s)))

    def _close(self, conn: Connection, code: int, message: str, reason: str) -> None:
        """Flush what is queued, then close with `code` (close frame last)."""
        if conn.closed:
            return
        assert self.outbox is not None
        self.outbox.flush_one(conn)
        conn.close_reason = reason
        conn.closed = True
        self._keep(asyncio.ensure_future(self._close_ws(conn, code, message)))

    async def _close_ws(self, conn: Connection, code: int, message: str) -> None:
        try:
            async with asyncio.timeout(self.config.heartbeat_timeout_s):
                await conn.ws.close(code=code, message=message.encode())
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            conn.transport.abort()

    def _on_slow_consumer(self, conn, buffered: int) -> None:
        self.metrics.slow_consumer_disconnects.inc()
        log.info("closing slow consumer %s: %d bytes buffered", conn.id, buffered)
        conn.close_reason = "slow_consumer"
        conn.closed = True
        # The close frame queues behind everything the reader has not taken; if the
        # buffer has not drained within the grace period, the socket is cut, so the
        # memory it holds stays bounded in bytes and in time.
        transport = conn.transport
        transport.write(frames.close_frame(protocol.CloseCode.TRY_AGAIN_LATER, "slow consumer"))
        asyncio.get_running_loop().call_later(SLOW_CONSUMER_GRACE_S, transport.abort)

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

    # --- shutdown -----------------------------------------------------------------

    def begin_shutdown(self) -> None:
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self.shutdown())

    def steer_notice(self, conn: Connection, frame: dict) -> None:
        """Send one `reconnect` notice, then close the socket with 1001 (notice first, close frame last)."""
        assert self.outbox is not None
        self.outbox.push(conn, conn.frame(frame))
        self._close(conn, protocol.CloseCode.GOING_AWAY, frame["reason"], frame["reason"])

    async def shutdown(self) -> None:
        """Refuse new sockets, steer clients away over the window, wait, then stop."""
        self.state = SHUTTING_DOWN
        if self.heartbeat is not None:
            self.heartbeat.stop_following()  # a drain or rebalance in progress must not steer the same clients
        conns = list(self.connections.values())
        log.info("worker %s shutting down: %d connections to steer away", self.worker_id, len(conns))
        loop = asyncio.get_running_loop()
        started = loop.time()
        # No rate cap here: the process is leaving, the window is the only pace that fits its deadline.
        await steering.steer_away(
            conns, reason="shutdown", window_s=self.config.shutdown_window_s, max_rate_per_s=None,
            jitter_ms=self.config.reconnect_jitter_ms,
            # Each client is pointed at its room's owner once this worker has left the ring (no url without a ring).
            target_url=self.heartbeat.successor_targets() if self.heartbeat is not None else (lambda conn: None),
            notify=self.steer_notice, progress=steering.SteeringProgress("shutdown"),
        )
        deadline = started + self.config.shutdown_timeout_s
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.connections:
            log.warning("worker %s: %d connections left at the deadline; cutting them", self.worker_id, len(self.connections))
            for conn in list(self.connections.values()):
                conn.transport.abort()
        self._stopped.set()

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
        site = web.TCPSite(
            runner, self.config.host, self.config.port, backlog=self.config.listen_backlog, reuse_address=True
        )
        await site.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_shutdown)
        await self._stopped.wait()
        await runner.cleanup()
        log.info("worker %s stopped", self.worker_id)


def run_worker(config: NodeConfig) -> None:
    setup_logging(config.log_level, component="worker", worker=config.shard_id)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(Worker(config).run())
    else:
        uvloop.run(Worker(config).run())


def main(argv: list[str]) -> int:
    values = json.loads(argv[0])
    values["jwt_secret"] = json.loads(os.environ.get(SECRETS_ENV, "[]"))
    config = NodeConfig(**values)
    run_worker(config)
    return 0


def config_to_json(config: NodeConfig) -> str:
    """The worker's settings for its command line, without the signing keys (argv is world-readable)."""
    return json.dumps(dict(dataclasses.asdict(config), jwt_secret=[]))


def secrets_env(config: NodeConfig) -> dict[str, str]:
    """The signing keys for the worker's environment (readable only by its user)."""
    return {SECRETS_ENV: json.dumps(config.jwt_secret)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
