"""The control plane's settings: every bound and knob of one control replica.

Owns the `ControlConfig` dataclass: one field per setting, its unit in its
name, its default and the one-line help `ringcast control --help` prints.
Loading (flags, `RINGCAST_CONTROL_*` environment, TOML section `[control]`) is
`common.settings`' job; this module only declares and validates.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.keys import check_cluster_prefixes
from common.redis_connect import RedisConnectionSettings, RedisTarget
from common.settings import SettingsError, setting

ADMIN_TOKEN_ENV = "RINGCAST_ADMIN_TOKEN"


@dataclass(frozen=True)
class ControlConfig(RedisConnectionSettings):  # redis_password_file, redis_tls_*, ... (common.redis_connect)
    # --- where it runs ----------------------------------------------------
    host: str = setting("127.0.0.1", "address the operator API binds to")
    port: int = setting(8600, "port of the operator API")
    redis: str = setting("redis://127.0.0.1:6379/0", "Redis URL shared with the workers (membership, ring, commands)", shared=True)
    key_prefix: str = setting("ringcast:", "prefix of every Redis key (same as the workers' --key-prefix)", shared=True)
    admin_token: str = setting("", "bearer token required by mutations; empty refuses every mutation", env_alias=ADMIN_TOKEN_ENV)
    replica_id: str = setting("", "this replica's name in the leader lease; empty means host:port")
    advertise_url: str = setting("", "URL other replicas and the CLI use to reach this API; empty means http://host:port")
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"), shared=True)

    # --- failure detection ---------------------------------------------------
    tick_interval_s: float = setting(0.25, "how often the leader reads heartbeats and recomputes the ring")
    dead_after_s: float = setting(3.0, "a worker silent this long is declared dead and leaves the ring")
    rejoin_hold_down_s: float = setting(5.0, "a worker that died must heartbeat steadily this long before it rejoins (anti-flap)")

    # --- leader lease -----------------------------------------------------------
    lease_s: float = setting(3.0, "leader lease length; a follower takes over at most this long after the leader dies")
    lease_renew_interval_s: float = setting(0.5, "how often the leader renews (and followers try to take) the lease")

    # --- drain and rebalance ------------------------------------------------------
    drain_window_s: float = setting(5.0, "default window a drain spreads its clients' reconnect notices over")
    drain_timeout_s: float = setting(30.0, "default deadline after which a draining worker reports drained even if not empty")
    auto_rebalance: bool = setting(True, "after a worker joins the ring, steer clients of rooms that moved to it")

    # --- bounded state ------------------------------------------------------------
    max_events: int = setting(1000, "events kept in Redis for GET /v1/events (oldest dropped)")
    max_events_page: int = setting(200, "most events one GET /v1/events returns")
    redis_timeout_s: float = setting(2.0, "longest one Redis call of the control plane waits")

    def validate(self) -> None:
        positive = [
            "port", "tick_interval_s", "dead_after_s", "lease_s", "lease_renew_interval_s", "drain_timeout_s",
            "max_events", "max_events_page", "redis_timeout_s",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.rejoin_hold_down_s < 0 or self.drain_window_s < 0:
            raise SettingsError("rejoin_hold_down_s and drain_window_s must be >= 0")
        target = RedisTarget.from_settings(self)  # a malformed URL, an unreadable password/CA/cert file: refused at startup
        if target.cluster:
            check_cluster_prefixes(key_prefix=self.key_prefix)
        if self.lease_renew_interval_s * 2 > self.lease_s:
            raise SettingsError("lease_renew_interval_s must be at most half of lease_s, or the leader loses its lease")

    @property
    def token(self) -> str:
        """The admin token (RINGCAST_ADMIN_TOKEN, the name `ringcast ctl` reads too, is folded in by settings)."""
        return self.admin_token

    @property
    def url(self) -> str:
        return self.advertise_url or f"http://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return self.replica_id or f"{self.host}:{self.port}"
