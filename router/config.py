"""The route service's settings: every bound and knob of one `ringcast router`.

Owns the `RouterConfig` dataclass: one field per setting, its unit in its
name, its default and the one-line help `ringcast router --help` prints.
Loading (flags, `RINGCAST_ROUTER_*` environment, TOML section `[router]`) is
`common.settings`' job; this module only declares and validates.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from common.keys import check_cluster_prefixes
from common.redis_connect import RedisConnectionSettings, RedisTarget
from common.settings import SettingsError, setting
from router.membership import NODES_SYNTAX, parse_nodes


@dataclass(frozen=True)
class RouterConfig(RedisConnectionSettings):  # redis_password_file, redis_tls_*, ... (common.redis_connect)
    host: str = setting("127.0.0.1", "address the route service binds to")
    port: int = setting(8800, "port of the route service")
    redis: str = setting("", "Redis URL where the control plane publishes the ring; empty: use --nodes only", shared=True)
    nodes: list[str] = setting([], f"static members, {NODES_SYNTAX}, repeatable or comma-separated; with --redis, used until a ring is published")
    key_prefix: str = setting("ringcast:", "prefix of Redis keys; the ring is read from {key_prefix}ring ({key_prefix}{ctl}ring on a redis+cluster:// URL)", shared=True)
    ring_poll_interval_s: float = setting(0.5, "how often the published ring is read from Redis")
    redis_timeout_s: float = setting(1.0, "longest one read of the ring from Redis waits")
    advertise_url: str = setting("", "URL Prometheus reaches this router at, announced in Redis with --redis; empty means http://host:port")
    presence_ttl_s: float = setting(5.0, "with --redis, this router stays listed in service discovery this long after its last announce (announced every third of it)")
    max_room_name_chars: int = setting(128, "longest room name accepted (keep equal to the nodes' setting)")
    listen_backlog: int = setting(1024, "TCP accept backlog of the route service's socket")
    api_max_body_bytes: int = setting(64 * 1024, "largest body of a forwarded HTTP API request (POST /v1/publish, /v1/broadcast); past it 413 BODY_TOO_LARGE (keep equal to the nodes' max_frame_bytes)")
    api_forward_timeout_s: float = setting(5.0, "longest a forwarded HTTP API request waits for the worker's answer; past it 503 PUBLISH_UNCONFIRMED (POST) or WORKER_UNREACHABLE (GET)")
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"), shared=True)

    def validate(self) -> None:
        for name in ("port", "ring_poll_interval_s", "redis_timeout_s", "presence_ttl_s", "max_room_name_chars", "listen_backlog",
                     "api_max_body_bytes", "api_forward_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_room_name_chars > 1024:
            raise SettingsError("max_room_name_chars must be <= 1024")
        try:
            members = parse_nodes(self.nodes)
        except ValueError as exc:
            raise SettingsError(f"nodes: {exc}") from None
        if not self.redis and not members:
            raise SettingsError("give --redis (follow the control plane's ring) or --nodes (a static ring), or both")
        if self.redis:
            target = RedisTarget.from_settings(self)  # a malformed URL, an unreadable password/CA/cert file: refused at startup
            if target.cluster:
                check_cluster_prefixes(key_prefix=self.key_prefix)

    @property
    def url(self) -> str:
        return self.advertise_url or f"http://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        """This router's id in service discovery: host:port of its advertised URL."""
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
