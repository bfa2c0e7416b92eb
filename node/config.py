"""The edge node's settings: every bound and knob of a supervisor and its workers.

Owns the `NodeConfig` dataclass: one field per setting, its unit in its name,
its default and a one-line help that `ringcast node --help` prints. Loading
(flags, `RINGCAST_*` environment, TOML) is `common.settings`' job; this module
only declares and validates.

It also owns a node's identity and addresses, derived from the settings: the
advertised host (`--advertise-host`, else `--host`, else, for a wildcard
`--host`, the host's primary address read from its interfaces without sending
a packet), the node id, each worker's shard id (`NODE_ID:PORT`), internal
address (`HOST:PORT`) and public URL (the `--public-url` template), and the
ring of a lone node's own workers. The supervisor resolves the advertised host
and node id once (`resolved`) and hands each worker its settings
(`for_worker`), so siblings agree on every id and URL.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from node.client_address import parse_trusted_proxies
from node.api_keys import parse_api_keys
from node.auth import JwksSettings, JwksSource, TokenVerifier, parse_secrets
from node.history import HistoryPolicy, HistoryRules
from common.keys import check_cluster_prefixes
from common.redis_connect import RedisConnectionSettings, RedisTarget
from common.settings import SettingsError, setting
from router.membership import parse_nodes
from router.ring import Member

WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # --host values that bind every interface and name none
URL_PLACEHOLDERS = ("host", "port", "index", "node_id")  # what a --public-url template may contain
DEFAULT_PUBLIC_URL = "ws://{host}:{port}/ws"


@dataclass(frozen=True)
class NodeConfig(RedisConnectionSettings):  # redis_password_file, redis_tls_*, ... (common.redis_connect)
    # --- process layout -------------------------------------------------
    host: str = setting("127.0.0.1", "address every worker binds to")
    port: int = setting(8700, "port of worker 0; worker i listens on port + i")
    workers: int = setting(os.cpu_count() or 1, "worker processes (shards) to run; default: CPU count")
    node_id: str = setting("", "this host's name in the fleet, stable across restarts; worker ids are NODE_ID:PORT; default: the advertised host")
    advertise_host: str = setting("", "address other hosts and clients reach this node at; default: --host, or the host's primary address when --host is a wildcard (0.0.0.0, ::)")
    public_url: str = setting("", "URL template clients are given for worker i, with {host} {port} {index} {node_id} (e.g. wss://edge.example.com/w/{node_id}-{index}); default ws://{host}:{port}/ws")
    worker_id: str = setting("", "shard id of a single worker; empty means NODE_ID:PORT (set per worker by the supervisor)")
    worker_index: int = setting(0, "index of a single worker on its node, 0-based (set per worker by the supervisor, with --port its own port); {index} of --public-url")
    node_workers: int = setting(0, "workers on a single worker's node (set per worker by the supervisor; the lone-node ring lists them); 0 means --workers")
    bus: str = setting(
        "redis",
        "message bus: redis (cluster), redis-cluster (a Redis Cluster, sharded pub/sub; --redis redis+cluster://SEED:PORT,...),"
        " memory (one process, no Redis), or global (comparison baseline: every worker"
        " receives every message (the tutorial's design); never for production)",
        choices=("redis", "redis-cluster", "memory", "global"),
    )
    redis: str = setting("redis://127.0.0.1:6379/0", "Redis URL of the bus: redis://, rediss:// (TLS), redis+sentinel://H1:26379,H2:26379/MASTER/DB (see docs/operations.md); put the password in redis_password_file", shared=True)
    channel_prefix: str = setting("ringcast:room:", "prefix of every room's Redis pub/sub channel", shared=True)
    key_prefix: str = setting("ringcast:", "prefix of every other Redis key ringcast writes", shared=True)
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"), shared=True)

    # --- wire limits ----------------------------------------------------
    max_frame_bytes: int = setting(64 * 1024, "largest WebSocket frame accepted; larger ones close with 1009 before buffering")
    max_message_bytes: int = setting(64 * 1024, "largest encoded message put on the bus; larger gets MESSAGE_TOO_LARGE")
    max_room_name_chars: int = setting(128, "longest room name accepted")
    max_rooms_per_connection: int = setting(100, "rooms one connection may join at once (TOO_MANY_ROOMS past it)")
    max_json_depth: int = setting(32, "deepest nesting of arrays/objects accepted in a message's data")

    # --- rate limits ----------------------------------------------------
    message_rate_per_s: float = setting(100.0, "sustained client frames per second per connection (token bucket refill)")
    message_burst: int = setting(200, "token bucket size: frames a connection may send at once")
    max_publishes_in_flight: int = setting(32, "publishes one connection may have sent to the bus and not yet acked; the next frame is read once the oldest is answered (acks and errors keep the frames' order)")
    flood_close_after_rejections: int = setting(100, "consecutive rate-limited frames after which the connection closes with 1008")

    # --- connection limits ----------------------------------------------
    max_connections: int = setting(10_000, "connections one worker holds; past it new sockets close with 1013")
    max_connections_per_ip: int = setting(1_000, "connections from one IP per worker; past it the upgrade gets HTTP 429")
    max_outbound_bytes: int = setting(512 * 1024, "per-connection bytes queued for a slow reader; past it close 1013 (slow consumer)")
    write_coalesce_ms: float = setting(0.0, "hold outgoing frames this long so several share one write (fewer syscalls on fan-out, that much more latency); 0: end of the loop turn")
    write_hold_max_ms: float = setting(20.0, "adaptive coalescing: longest a BUSY worker holds outgoing frames so several messages share one write per socket (after a flush that took c ms, frames queued within 2c*r ms wait for the rest of that time; r is the share of its sockets the flush before it wrote too); an idle worker writes at the end of the loop turn; 0: never hold")
    socket_send_buffer_bytes: int = setting(128 * 1024, "SO_SNDBUF per client socket (kernel doubles it); 0 keeps the kernel's autotuning")
    listen_backlog: int = setting(4096, "TCP accept backlog of each worker's listening socket")
    gc_threshold: int = setting(100_000, "net allocations of container objects between two youngest-generation runs of the cyclic garbage collector in a worker (gc.set_threshold(N, 50, 1000)); fewer collections, cyclic garbage lives longer; 0 keeps CPython's default (700, 10, 10)")
    gc_freeze: bool = setting(True, "move the objects alive when a worker starts (modules, settings, the app) out of the collector's reach (gc.freeze()), so collections no longer walk them")

    # --- security (node.auth, node.admission; docs/security.md) ------------
    auth: str = setting("auto", "connection tokens: required, off, or auto (required once a --jwt-secret is set; off warns loudly)", choices=("auto", "required", "off"))
    jwt_secret: list[str] = setting([], "HS256 token key KID=SECRET (>= 32 bytes), repeatable for rotation; env RINGCAST_JWT_SECRETS, comma-separated")
    jwt_leeway_s: float = setting(0.0, "clock skew tolerated on a token's exp/nbf, in seconds")
    jwt_audience: str = setting("", "when set, every token's `aud` must name it (string or list); empty: `aud` is not checked")
    jwt_issuer: str = setting("", "when set, every token's `iss` must equal it; empty: `iss` is not checked")
    jwt_jwks_url: str = setting("", "http(s) URL of the issuer's JWKS: public keys (by kid) for RS256/ES256 tokens; empty: HS256 secrets only")
    jwt_jwks_timeout_s: float = setting(5.0, "longest one JWKS fetch may take, connect to last byte; upgrades waiting on it then get 401")
    jwt_jwks_refresh_interval_s: float = setting(300.0, "JWKS keys older than this are fetched again by the next RS256/ES256 upgrade")
    jwt_jwks_min_refetch_interval_s: float = setting(30.0, "fewest seconds between two JWKS fetches, whatever kids tokens name (bounds fetches clients can cause, and retries after a failure)")
    jwt_jwks_max_keys: int = setting(16, "most keys kept from one JWKS document; later keys are ignored (and logged)")
    jwt_jwks_max_bytes: int = setting(64 * 1024, "largest JWKS document read; a larger one is a failed fetch")
    trusted_proxies: list[str] = setting([], "CIDRs of proxies whose Forwarded / X-Forwarded-For header (or PROXY protocol v2 header, with --proxy-protocol) names the real client address, repeatable; from any other peer those are ignored")
    proxy_protocol: bool = setting(False, "connections from --trusted-proxies must start with a PROXY protocol v2 header (HAProxy send-proxy-v2, e.g. TLS passthrough); its source address is the client; a trusted peer without one is cut after handshake_timeout_s")
    allowed_origins: list[str] = setting([], "browser Origins (exact or glob, e.g. https://*.example.com) that may upgrade, repeatable; empty: any Origin")
    accept_rate_per_s: float = setting(1_000.0, "new WebSockets per second one worker admits (token bucket refill); past it HTTP 503 + Retry-After")
    accept_burst: int = setting(2_000, "new WebSockets one worker admits at once before accept_rate_per_s applies")
    ip_refused_upgrade_rate_per_s: float = setting(1.0, "refused upgrades (bad token, Origin not allowed) per second one client address may keep making (token bucket refill); past the burst every upgrade from it gets HTTP 429 TOO_MANY_REFUSED_UPGRADES_FROM_IP")
    ip_refused_upgrade_burst: int = setting(20, "refused upgrades one client address may make at once before ip_refused_upgrade_rate_per_s applies")
    ip_refused_upgrade_max_ips: int = setting(10_000, "client addresses whose refused upgrades a worker remembers (LRU, about 270 bytes each with the address); past it the least recently refused is forgotten")
    handshake_timeout_s: float = setting(10.0, "seconds from TCP accept to a complete upgrade request (slowloris); also the idle timeout of plain HTTP keep-alive")
    max_http_header_bytes: int = setting(8190, "longest request line and longest header line of an upgrade request; past it HTTP 400")
    user_message_rate_per_s: float = setting(200.0, "sustained frames per second of one token's `sub` over all its connections on a worker")
    user_message_burst: int = setting(400, "per-user token bucket size")
    max_idle_user_buckets: int = setting(10_000, "per-user buckets kept after a user's last connection closes (LRU), so a reconnect does not refill them")
    new_room_rate_per_s: float = setting(1.0, "sustained joins per second of rooms a user (or, without auth, a connection) has not joined recently (node.room_quota; past it NEW_ROOM_RATE_EXCEEDED)")
    new_room_burst: int = setting(100, "new rooms a user or connection may join at once before new_room_rate_per_s applies (at most 10000)")
    new_room_remembered: int = setting(1_000, "rooms remembered per user or connection as not new (LRU; at most 100000)")
    new_room_max_identities: int = setting(100_000, "users/connections whose new-room quota a worker tracks (LRU; at most 1000000)")

    # --- liveness -------------------------------------------------------
    heartbeat_interval_s: float = setting(30.0, "seconds between server pings to each client")
    heartbeat_timeout_s: float = setting(10.0, "seconds a client has to answer a ping before it is terminated")

    # --- bus resilience -------------------------------------------------
    bus_max_connections: int = setting(16, "command connections per worker to Redis (history reads, presence); publishes have one connection of their own; excess requests wait")
    bus_timeout_s: float = setting(2.0, "longest a publish or a subscribe waits for Redis before BUS_UNAVAILABLE")
    bus_reconnect_base_s: float = setting(0.1, "first delay before reconnecting to Redis; doubles per failure")
    bus_reconnect_cap_s: float = setting(5.0, "longest delay between Redis reconnect attempts")
    room_state_ttl_s: int = setting(300, "seconds a room's seq/epoch live after its last message, or its history TTL if longer (at most 86400)")

    # --- history and resume -----------------------------------------------
    history_size: int = setting(100, "messages each room keeps for resume, unless a --history-rule matches (0: none)")
    history_ttl_s: int = setting(300, "seconds a room's history lives after its last message")
    history_rule: list[str] = setting([], "per-prefix history, PREFIX*=SIZE:TTL_S, repeatable (e.g. chat:*=1000:600, cursor:*=0:0)")
    max_history_page: int = setting(100, "most messages one resume or history request returns")
    max_join_buffer_messages: int = setting(10_000, "live messages buffered for a joiner while its history is read; past it the socket is cut")

    # --- presence (node.presence, node.presence_events; docs/protocol.md) -------------
    presence_rule: list[str] = setting([], "rooms whose members are tracked for presence / presence_stats requests and GET /v1/rooms/{room}/presence, PREFIX*, repeatable (e.g. chat:*); none by default")
    presence_events_rule: list[str] = setting([], "rooms whose members receive presence_diff join/leave events, PREFIX*, repeatable (e.g. chat:*); none by default")
    presence_ttl_s: float = setting(15.0, "a worker refreshes its presence liveness every third of this; a worker that stops (SIGKILL, partition) has its members dropped from presence answers at most this long after")
    presence_room_ttl_s: float = setting(3600.0, "a room's presence hash expires this long after the last write or refresh from a worker with members in it (abandoned rooms go away)")
    presence_max_members: int = setting(1_000, "most members one presence answer lists (then complete: false)")
    presence_max_stats_entries: int = setting(100_000, "most presence entries one presence_stats answer counts (then complete: false)")
    presence_events_interval_ms: int = setting(500, "join/leave events are coalesced over this window: at most one presence_diff per room per worker per window")
    presence_events_max_entries: int = setting(100, "most joined + left members one presence_diff lists; past it the frame carries counts only (truncated: true)")

    # --- placement (router.ring) -------------------------------------------
    nodes: list[str] = setting([], "static ring members, [ID=]HOST:PORT[@WEIGHT], repeatable; a ring published by the control plane wins")
    ring_poll_interval_s: float = setting(0.5, "how often a worker reads the control plane's published ring from Redis")
    placement_hint: str = setting("hint", "on a join for a room another worker owns: serve it and send `moved` (hint) or just serve it (off)", choices=("hint", "off"))

    # --- shutdown -------------------------------------------------------
    shutdown_window_s: float = setting(2.0, "on shutdown, spread clients' reconnect notices over this many seconds")
    reconnect_jitter_ms: int = setting(1_000, "upper bound of the random delayMs a reconnect notice asks clients to wait")
    shutdown_timeout_s: float = setting(10.0, "longest a worker waits for its clients to leave before it exits")

    # --- control plane ----------------------------------------------------
    control_heartbeat_interval_s: float = setting(1.0, "seconds between heartbeats to the control plane (via Redis); 0 disables them")
    heartbeat_max_rooms_reported: int = setting(1_000, "most rooms (the most populated) a heartbeat reports with member counts (at most 10000: each beat carries up to ~1.4 MB then)")
    steer_max_rate_per_s: float = setting(200.0, "fastest pace of reconnect notices during a drain or rebalance (notices per second)")

    # --- HTTP API for backends (node.http_api, docs/api.md) ----------------------
    api_key: list[str] = setting([], "backend API key NAME=SECRET (secret >= 32 characters), repeatable for rotation; env RINGCAST_API_KEYS, comma-separated; none: POST /v1/publish and the rest refuse with API_DISABLED")
    api_max_broadcast_rooms: int = setting(100, "most rooms one POST /v1/broadcast may name (at most 10000)")
    idempotency_window_s: int = setting(300, "seconds a publish's idempotency key is remembered: a retry with the same key within it returns the first publish's seq/epoch and publishes nothing (at most 86400)")
    max_idempotency_keys: int = setting(100_000, "idempotency keys the in-process bus (--bus memory) remembers; past it the oldest is forgotten (Redis keeps every key for the window)")

    # --- supervisor -----------------------------------------------------
    restart_backoff_base_s: float = setting(0.5, "first delay before restarting a crashed worker; doubles per crash")
    restart_backoff_cap_s: float = setting(30.0, "longest delay before restarting a crashed worker")
    restart_reset_after_s: float = setting(30.0, "a worker alive this long has its crash backoff reset")

    def validate(self) -> None:
        positive = [
            "port", "workers", "max_frame_bytes", "max_message_bytes", "max_room_name_chars",
            "max_rooms_per_connection", "max_json_depth", "message_rate_per_s", "message_burst", "max_publishes_in_flight",
            "flood_close_after_rejections", "max_connections", "max_connections_per_ip",
            "max_outbound_bytes", "heartbeat_interval_s", "heartbeat_timeout_s", "bus_timeout_s",
            "bus_reconnect_base_s", "bus_max_connections", "bus_reconnect_cap_s", "room_state_ttl_s", "shutdown_timeout_s",
            "restart_backoff_base_s", "restart_backoff_cap_s", "listen_backlog",
            "max_history_page", "max_join_buffer_messages", "heartbeat_max_rooms_reported", "steer_max_rate_per_s",
            "accept_rate_per_s", "accept_burst", "handshake_timeout_s", "max_http_header_bytes",
            "ip_refused_upgrade_rate_per_s", "ip_refused_upgrade_burst", "ip_refused_upgrade_max_ips",
            "user_message_rate_per_s", "user_message_burst", "max_idle_user_buckets",
            "new_room_rate_per_s", "new_room_burst", "new_room_remembered", "new_room_max_identities",
            "presence_ttl_s", "presence_room_ttl_s", "presence_max_members", "presence_max_stats_entries",
            "presence_events_interval_ms", "presence_events_max_entries",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.control_heartbeat_interval_s < 0:
            raise SettingsError("control_heartbeat_interval_s must be >= 0 (0 disables heartbeats)")
        if self.bus != "memory":
            target = RedisTarget.from_settings(self)  # a malformed URL, an unreadable password/CA/cert file: refused at startup
            if target.cluster != (self.bus == "redis-cluster"):
                raise SettingsError("--bus redis-cluster goes with a redis+cluster:// (or rediss+cluster://) URL, and only it")
            if target.cluster:
                if self.presence_rule or self.presence_events_rule:
                    raise SettingsError("presence (--presence-rule, --presence-events-rule) is not available with --bus redis-cluster yet")
                check_cluster_prefixes(key_prefix=self.key_prefix, channel_prefix=self.channel_prefix)
        if not 0 <= self.write_coalesce_ms <= 1000:
            raise SettingsError("write_coalesce_ms must be between 0 and 1000")
        if not 0 <= self.write_hold_max_ms <= 1000:
            raise SettingsError("write_hold_max_ms must be between 0 and 1000")
        if not 0 <= self.gc_threshold <= 10_000_000:
            raise SettingsError("gc_threshold must be between 0 (CPython's default) and 10000000")
        if self.shutdown_window_s < 0 or self.reconnect_jitter_ms < 0 or self.socket_send_buffer_bytes < 0:
            raise SettingsError("shutdown_window_s and reconnect_jitter_ms must be >= 0")
        if self.port + self.workers - 1 > 65535:
            raise SettingsError(f"ports {self.port}..{self.port + self.workers - 1} exceed 65535")
        if self.bus == "memory" and self.workers != 1:
            raise SettingsError("--bus memory runs in one process: use --workers 1")
        if self.history_size < 0 or self.history_ttl_s < 0 or (self.history_size > 0 and self.history_ttl_s == 0):
            raise SettingsError("history_size >= 0, history_ttl_s >= 0, and history_ttl_s > 0 when history_size > 0")
        try:
            self.history_rules()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        try:
            from node.presence import PresenceRules  # local: node.presence imports this module
            PresenceRules(self.presence_rule)
            PresenceRules(self.presence_events_rule)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.max_room_name_chars > 1024:
            raise SettingsError("max_room_name_chars must be <= 1024")
        upper = {"room_state_ttl_s": 86_400, "heartbeat_max_rooms_reported": 10_000, "new_room_rate_per_s": 1_000.0, "new_room_burst": 10_000,
                 "new_room_remembered": 100_000, "new_room_max_identities": 1_000_000}
        for name, bound in upper.items():
            if getattr(self, name) > bound:
                raise SettingsError(f"{name} must be <= {bound}, got {getattr(self, name)!r}")
        if self.ring_poll_interval_s <= 0:
            raise SettingsError(f"ring_poll_interval_s must be > 0, got {self.ring_poll_interval_s!r}")
        try:
            parse_secrets(self.jwt_secret)
        except ValueError as exc:
            raise SettingsError(f"jwt_secret: {exc}") from None
        if self.auth == "required" and not self.jwt_secret and not self.jwt_jwks_url:
            raise SettingsError(
                "--auth required needs at least one --jwt-secret KID=SECRET (or RINGCAST_JWT_SECRETS) or a --jwt-jwks-url"
            )
        if self.jwt_leeway_s < 0:
            raise SettingsError("jwt_leeway_s must be >= 0")
        if self.jwt_jwks_url and not self.jwt_jwks_url.startswith(("https://", "http://")):
            raise SettingsError(f"jwt_jwks_url must be an http(s) URL, got {self.jwt_jwks_url!r}")
        for name in ("jwt_jwks_timeout_s", "jwt_jwks_refresh_interval_s", "jwt_jwks_min_refetch_interval_s",
                     "jwt_jwks_max_keys", "jwt_jwks_max_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.jwt_jwks_min_refetch_interval_s > self.jwt_jwks_refresh_interval_s:
            raise SettingsError("jwt_jwks_min_refetch_interval_s must be <= jwt_jwks_refresh_interval_s")
        try:
            parse_trusted_proxies(self.trusted_proxies)
        except ValueError as exc:
            raise SettingsError(f"trusted_proxies: {exc}") from None
        if self.proxy_protocol and not self.trusted_proxies:
            raise SettingsError("--proxy-protocol needs --trusted-proxies: the proxies whose PROXY header is believed")
        try:
            parse_nodes(self.nodes)
        except ValueError as exc:
            raise SettingsError(f"nodes: {exc}") from None
        self._validate_api()
        self._validate_identity()

    def _validate_api(self) -> None:
        try:
            parse_api_keys(self.api_key)
        except ValueError as exc:
            raise SettingsError(f"api_key: {exc}") from None
        for name, bound in (("api_max_broadcast_rooms", 10_000), ("idempotency_window_s", 86_400),
                            ("max_idempotency_keys", 10_000_000)):
            if not 0 < getattr(self, name) <= bound:
                raise SettingsError(f"{name} must be > 0 and <= {bound}, got {getattr(self, name)!r}")

    def _validate_identity(self) -> None:
        if self.worker_index < 0 or self.node_workers < 0 or (self.node_workers and self.worker_index >= self.node_workers):
            raise SettingsError("worker_index must be >= 0 and below node_workers, node_workers >= 0 (the supervisor sets both)")
        if self.worker_id and self.workers > 1:
            raise SettingsError("--worker-id names a single worker; with --workers > 1 set --node-id (worker ids are NODE_ID:PORT)")
        if self.advertise_host and self.advertise_host.strip() in WILDCARD_HOSTS:
            raise SettingsError(f"--advertise-host {self.advertise_host!r} is a wildcard: name an address or a DNS name others can reach")
        if any(c.isspace() for c in self.node_id) or "/" in self.node_id:
            raise SettingsError(f"--node-id {self.node_id!r} must not contain whitespace or '/'")
        placeholders = template_placeholders(self.public_url or DEFAULT_PUBLIC_URL)
        if self.workers > 1 and not {"index", "port"} & placeholders:
            raise SettingsError(
                f"--public-url {self.public_url!r} has neither {{index}} nor {{port}}: with --workers {self.workers}"
                " every worker would be given the same URL"
            )
        self.worker_url(0, self.port)  # the advertised host resolves and the template expands to a ws(s):// URL

    # --- identity and addresses ----------------------------------------------------

    def advertised_host(self) -> str:
        """The host others reach this node at: --advertise-host, else --host, else (wildcard --host) the primary address."""
        if self.advertise_host:
            return self.advertise_host
        if self.host.strip() not in WILDCARD_HOSTS:
            return self.host
        return primary_address()

    @property
    def node_name(self) -> str:
        """This node's id in the fleet: --node-id, else the advertised host."""
        return self.node_id or self.advertised_host()

    def resolved(self) -> "NodeConfig":
        """These settings with the advertised host and node id filled in, resolved once (by the supervisor)
        so every worker of the node agrees on them even if the host's addresses change meanwhile."""
        host = self.advertised_host()
        return dataclasses.replace(self, advertise_host=host, node_id=self.node_id or host)

    @property
    def shard_id(self) -> str:
        return self.worker_id or f"{self.node_name}:{self.port}"

    def worker_address(self, port: int) -> str:
        """The internal HOST:PORT of this node's worker on `port` (IPv6 in brackets)."""
        return f"{_url_host(self.advertised_host())}:{port}"

    def worker_url(self, index: int, port: int) -> str:
        """The public URL clients are given for this node's worker `index` (listening on `port`)."""
        return expand_public_url(self.public_url or DEFAULT_PUBLIC_URL, self.advertised_host(), port, index, self.node_name)

    @property
    def address(self) -> str:
        """This worker's internal HOST:PORT."""
        return self.worker_address(self.port)

    @property
    def url(self) -> str:
        """This worker's public URL."""
        return self.worker_url(self.worker_index, self.port)

    def sibling_members(self) -> list[Member]:
        """Every worker of this worker's node as a ring member (ids, public URLs, addresses), computed
        the way each sibling computes its own: the ring of a node with neither a control plane nor --nodes."""
        count = self.node_workers or self.workers
        first_port = self.port - self.worker_index
        members = []
        for index in range(count):
            port = first_port + index
            member_id = self.shard_id if index == self.worker_index else f"{self.node_name}:{port}"
            members.append(Member(member_id, self.worker_url(index, port), 1, self.worker_address(port)))
        return members

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "required" or (self.auth == "auto" and bool(self.jwt_secret or self.jwt_jwks_url))

    def token_keys(self) -> dict[str, bytes]:
        return parse_secrets(self.jwt_secret)

    def token_verifier(self) -> TokenVerifier | None:
        """A worker's token verifier (HS256 secrets, JWKS keys, audience, issuer); None when auth is off."""
        if not self.auth_enabled:
            return None
        jwks = None
        if self.jwt_jwks_url:
            jwks = JwksSource(JwksSettings(
                self.jwt_jwks_url, self.jwt_jwks_timeout_s, self.jwt_jwks_refresh_interval_s,
                self.jwt_jwks_min_refetch_interval_s, self.jwt_jwks_max_keys, self.jwt_jwks_max_bytes,
            ))
        return TokenVerifier(
            self.token_keys(), self.jwt_leeway_s, audience=self.jwt_audience, issuer=self.jwt_issuer, jwks=jwks
        )

    def history_rules(self) -> HistoryRules:
        return HistoryRules(HistoryPolicy(self.history_size, self.history_ttl_s), list(self.history_rule))

    def for_worker(self, index: int) -> "NodeConfig":
        """The settings of worker `index`: its own port, index and shard id, its node's worker count, and
        the advertised host and node id resolved once here. A --worker-id is kept for a single worker."""
        node = self.resolved()
        port = self.port + index
        worker_id = self.worker_id if self.worker_id and self.workers == 1 else f"{node.node_id}:{port}"
        return dataclasses.replace(
            node, port=port, workers=1, worker_index=index, node_workers=self.workers, worker_id=worker_id
        )


def primary_address() -> str:
    """The host's primary IPv4 address, read from its interfaces (no packet is sent): the first address,
    by interface name, of an interface that is up, neither loopback nor link-local."""
    stats = psutil.net_if_stats()
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        if name not in stats or not stats[name].isup:
            continue
        for entry in addresses:
            if entry.family != socket.AF_INET:
                continue
            try:
                ip = ipaddress.IPv4Address(entry.address)
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                return str(ip)
    raise SettingsError(
        "--host is a wildcard and this host has no interface that is up with a non-loopback IPv4 address;"
        " set --advertise-host to the address (or DNS name) clients and other hosts reach this node at"
    )


def template_placeholders(template: str) -> set[str]:
    """The placeholders of a --public-url template; SettingsError on an unknown one or a malformed template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SettingsError(f"--public-url {template!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in URL_PLACEHOLDERS or spec or conversion:
            raise SettingsError(
                f"--public-url {template!r}: unknown placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}; allowed: {', '.join('{' + p + '}' for p in URL_PLACEHOLDERS)}"
            )
        names.add(name)
    return names


def expand_public_url(template: str, host: str, port: int, index: int, node_id: str) -> str:
    """A --public-url template filled in for one worker; SettingsError unless it gives a ws:// or wss:// URL."""
    template_placeholders(template)
    url = template.format(host=_url_host(host), port=port, index=index, node_id=node_id)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise SettingsError(f"--public-url {template!r} gives {url!r}: {exc}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise SettingsError(f"--public-url {template!r} gives {url!r}: expected a ws:// or wss:// URL with a host")
    return url


def _url_host(host: str) -> str:
    """`host` as it appears in a URL or a HOST:PORT: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
