"""How every ringcast process reaches Redis: one URL, its TLS files and its password.

Owns the one place a Redis connection is described and built:

- Parsing the URL forms (`parse_url`): `redis://` (plain), `rediss://`
  (TLS), `redis+sentinel://` and `rediss+sentinel://` (find the master
  through Sentinel; TLS to the sentinels and the data nodes alike),
  `redis+cluster://` and `rediss+cluster://` (a Redis Cluster: seed nodes,
  comma-separated; the rest is discovered), each
  `[[user]:password@]`-capable. A malformed URL is a `SettingsError` saying
  what is wrong, never a stack trace at the first command.
- Secrets (`RedisTarget.from_settings`): the password comes from
  `redis_password_file` (its first line), else `redis_password` (env
  `RINGCAST_REDIS_PASSWORD` or the TOML file: settings that are never a
  flag), else the URL. TLS files are checked readable at startup.
- Redaction (`redact_url`): the only form of a Redis URL that may reach a log
  line or an error message.
- Building clients (`RedisTarget.client`): a redis-py asyncio client whose
  connections follow a Sentinel failover (`master_for` pools ask the
  sentinels for the master at every new connection, and drop a demoted one),
  with the TLS options and password applied; on a cluster URL a redis-py
  `RedisCluster` (commands routed by slot, following MOVED and failovers).
- Locating the master for a raw connection (`RedisTarget.endpoint`): the
  host, port, ssl context and credentials node/redis_subscriber.py opens its
  own socket with, asked of the sentinels at every (re)connect.
- Reading Redis' clock where one key lives (`TIME_AT_KEY_SCRIPT`), the form
  of TIME a cluster client can send.

It must not know keys, channels, rooms or any service's settings class: it
reads the shared `redis*` settings by name from whatever object carries
them, and is imported by node, router and control alike.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from common.settings import SettingsError, setting

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SCHEMES = {  # scheme -> (tls, sentinel, cluster)
    "redis": (False, False, False),
    "rediss": (True, False, False),
    "redis+sentinel": (False, True, False),
    "rediss+sentinel": (True, True, False),
    "redis+cluster": (False, False, True),
    "rediss+cluster": (True, False, True),
}
URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://... (TLS), "
    "redis+sentinel://[[user]:password@]host[:port],host[:port],.../service[/db], rediss+sentinel://... (TLS), "
    "redis+cluster://[[user]:password@]host[:port],host[:port],... (Redis Cluster seed nodes), rediss+cluster://... (TLS)"
)

# Redis' clock read on the node that holds KEYS[1]: `EVAL TIME_AT_KEY_SCRIPT 1 <key>`. A Redis Cluster
# pipeline refuses TIME (a keyless command, it would go to any node), while EVAL with one key runs on
# that key's node: the clock that stamped the times stored under that key. Works unchanged on one server.
TIME_AT_KEY_SCRIPT = "return redis.call('TIME')"

_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^/\s]*@")  # up to the last @ before the host: a password may hold an @


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`: the only form fit for a log or an error."""
    return _PASSWORD_IN_URL.sub(r"\1***@", url)


@dataclass(frozen=True)
class RedisConnectionSettings:
    """How every service reaches its Redis besides the URL: password and TLS files, shared settings.

    The node, router and control configurations inherit these fields (each declares its own `redis`
    URL with its own help); `RedisTarget.from_settings` reads them.
    """

    redis_password_file: str = setting("", "file whose first line is the Redis password (wins over RINGCAST_REDIS_PASSWORD and a password in the URL; keep it out of URLs and argv)", shared=True)
    redis_password: str = setting("", "Redis password; environment or TOML only, never a flag", shared=True, secret=True)
    redis_sentinel_password_file: str = setting("", "with redis+sentinel://, file whose first line is the sentinels' own password; empty: sentinels without AUTH", shared=True)
    redis_tls_ca_file: str = setting("", "with rediss://, CA bundle (PEM) Redis' certificate must chain to; empty: the system's CAs", shared=True)
    redis_tls_cert_file: str = setting("", "with rediss://, client certificate (PEM) for Redis' tls-auth-clients; empty: none", shared=True)
    redis_tls_key_file: str = setting("", "with rediss://, private key (PEM) of redis_tls_cert_file; empty: in the certificate file", shared=True)
    redis_tls_check_hostname: bool = setting(True, "with rediss://, Redis' certificate must name the host or IP of the URL (or the one Sentinel gives)", shared=True)


@dataclass(frozen=True, slots=True)
class RedisTls:
    """TLS options of every connection to one deployment's Redis (data nodes and sentinels)."""

    ca_file: str = ""  # CA bundle the server certificate must chain to; empty: the system's
    cert_file: str = ""  # client certificate (Redis `tls-auth-clients yes`); empty: none
    key_file: str = ""  # its private key; empty: in cert_file
    check_hostname: bool = True  # the server certificate must name the host (or IP) connected to

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file or None)
        context.check_hostname = self.check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        return context

    def redis_py_kwargs(self) -> dict[str, Any]:
        return {
            "ssl_ca_certs": self.ca_file or None,
            "ssl_certfile": self.cert_file or None,
            "ssl_keyfile": self.key_file or None,
            "ssl_check_hostname": self.check_hostname,
            "ssl_cert_reqs": "required",
        }


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one raw connection goes now, and how it authenticates."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    username: str | None
    password: str | None


@dataclass(frozen=True)
class RedisTarget:
    """One deployment's Redis, parsed: a server, or a Sentinel-monitored master; with TLS and credentials."""

    hosts: tuple[tuple[str, int], ...]  # the server, every sentinel, or the cluster's seed nodes
    db: int = 0
    service: str = ""  # the Sentinel master name; empty: `hosts` is the server itself
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)  # AUTH to the sentinels; None: none
    tls: RedisTls | None = None  # None: plain TCP
    redacted: str = ""  # the URL as given, password hidden: for logs
    cluster: bool = False  # a Redis Cluster: `hosts` are seed nodes, db is 0

    @property
    def sentinel(self) -> bool:
        return bool(self.service)

    def __str__(self) -> str:
        return self.redacted

    # --- building ---------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Any) -> "RedisTarget":
        """The target the shared settings name (`redis`, `redis_password*`, `redis_tls_*` attributes).

        Raises SettingsError for a malformed URL, unreadable files, or TLS
        options on a plain-TCP URL.
        """
        url = getattr(settings, "redis")
        target = parse_url(url)
        tls_files = {
            "redis_tls_ca_file": getattr(settings, "redis_tls_ca_file", ""),
            "redis_tls_cert_file": getattr(settings, "redis_tls_cert_file", ""),
            "redis_tls_key_file": getattr(settings, "redis_tls_key_file", ""),
        }
        check_hostname = getattr(settings, "redis_tls_check_hostname", True)
        given = [name for name, path in tls_files.items() if path] + ([] if check_hostname else ["redis_tls_check_hostname"])
        if target.tls is None and given:
            raise SettingsError(
                f"{', '.join(given)} set but the Redis URL {target.redacted} is plain TCP: use rediss:// (or rediss+sentinel://)"
            )
        for name, path in tls_files.items():
            if path:
                _check_readable(name, path)
        if tls_files["redis_tls_key_file"] and not tls_files["redis_tls_cert_file"]:
            raise SettingsError("redis_tls_key_file set without redis_tls_cert_file")
        password = target.password
        inline = getattr(settings, "redis_password", "")
        if inline:
            password = inline
        password_file = getattr(settings, "redis_password_file", "")
        if password_file:
            password = _first_line(password_file, "redis_password_file")
        sentinel_password = None
        sentinel_file = getattr(settings, "redis_sentinel_password_file", "")
        if sentinel_file:
            if not target.sentinel:
                raise SettingsError(f"redis_sentinel_password_file set but {target.redacted} is not a redis+sentinel:// URL")
            sentinel_password = _first_line(sentinel_file, "redis_sentinel_password_file")
        tls = None
        if target.tls is not None:
            tls = RedisTls(tls_files["redis_tls_ca_file"], tls_files["redis_tls_cert_file"],
                           tls_files["redis_tls_key_file"], check_hostname)
            try:
                tls.context()  # a CA that is no CA, a key that does not match: refused now, not at connect
            except (ssl.SSLError, OSError) as exc:
                raise SettingsError(f"Redis TLS files: {exc}") from None
        return RedisTarget(target.hosts, target.db, target.service, target.username, password,
                           sentinel_password, tls, target.redacted, target.cluster)

    def client(self, *, timeout_s: float, max_connections: int | None = None, blocking: bool = False,
               retry: bool = True):
        """A redis-py asyncio client; on Sentinel, its connections go to the current master.

        `blocking` waits up to `timeout_s` for a free connection when
        `max_connections` are in use instead of failing. `retry=False` makes
        a failed command fail at once (the bus decides itself what to retry).
        """
        import redis.asyncio as redis_async
        from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, SSLConnection

        kwargs: dict[str, Any] = {
            "db": self.db, "username": self.username, "password": self.password,
            "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
        }
        if self.tls is not None:
            kwargs.update(self.tls.redis_py_kwargs())
        if self.cluster:
            return self._cluster_client(kwargs, max_connections, retry)
        if max_connections is not None:
            kwargs["max_connections"] = max_connections
        if blocking:
            kwargs["timeout"] = timeout_s
        if self.sentinel:
            pool = _sentinel_pool(self, kwargs, blocking)
        else:
            host, port = self.hosts[0]
            if self.tls is not None:
                kwargs["connection_class"] = SSLConnection
            pool = (BlockingConnectionPool if blocking else ConnectionPool)(host=host, port=port, **kwargs)
        extra = {} if retry else {"retry": None}
        return redis_async.Redis(connection_pool=pool, **extra)

    def _cluster_client(self, kwargs: dict[str, Any], max_connections: int | None, retry: bool):
        """A redis-py RedisCluster from the seed nodes; `max_connections` is per cluster node.

        Its connection pools always wait for a free connection (up to the
        socket timeout); with `retry=False` a command is still redirected on
        MOVED/ASK and retried once after the slot map is refreshed, as
        redis-py does for a lost node, but never more.
        """
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs = dict(kwargs)
        kwargs.pop("db")
        if self.tls is not None:
            kwargs["ssl"] = True
        if max_connections is not None:
            kwargs["max_connections"] = max_connections
        extra = {} if retry else {"retry": Retry(NoBackoff(), 1)}
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in self.hosts], **kwargs, **extra)

    def sentinel_manager(self, timeout_s: float):
        """A redis-py `Sentinel` for these sentinels (asks them; holds no master connection)."""
        from redis.asyncio.sentinel import Sentinel

        sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                                           "password": self.sentinel_password}
        if self.tls is not None:
            sentinel_kwargs.update(ssl=True, **self.tls.redis_py_kwargs())
        return Sentinel(list(self.hosts), sentinel_kwargs=sentinel_kwargs)

    def locator(self, timeout_s: float) -> "EndpointLocator":
        """Where raw connections (node/redis_subscriber.py) go: asked anew at every (re)connect."""
        return EndpointLocator(self, timeout_s)

    def node_locator(self, host: str, port: int, timeout_s: float) -> "EndpointLocator":
        """A raw connection to one given node (a Redis Cluster master), with this target's TLS and credentials."""
        return EndpointLocator(self, timeout_s, at=(host, port))


class EndpointLocator:
    """The current master's endpoint for a raw connection: the server itself, a given node, or asked of the sentinels."""

    def __init__(self, target: RedisTarget, timeout_s: float, at: tuple[str, int] | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.at = at  # a fixed node (a cluster master); None: the URL's server, or Sentinel's master
        self._context = target.tls.context() if target.tls is not None else None
        self._sentinel = target.sentinel_manager(timeout_s) if target.sentinel and at is None else None

    def __str__(self) -> str:
        return f"{self.at[0]}:{self.at[1]}" if self.at else self.target.redacted

    async def endpoint(self) -> Endpoint:
        """Raises ConnectionError (redis-py's MasterNotFoundError) when no sentinel names a healthy master."""
        if self.at is not None:
            host, port = self.at
        elif self._sentinel is None:
            host, port = self.target.hosts[0]
        else:
            host, port = await self._sentinel.discover_master(self.target.service)
        return Endpoint(host, int(port), self._context, self.target.username, self.target.password)

    async def close(self) -> None:
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()


def _sentinel_pool(target: RedisTarget, kwargs: dict[str, Any], blocking: bool):
    from redis.asyncio.connection import BlockingConnectionPool
    from redis.asyncio.sentinel import SentinelConnectionPool

    class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
        """A Sentinel pool that waits for a free connection like BlockingConnectionPool."""

    pool_class = BlockingSentinelPool if blocking else SentinelConnectionPool
    if target.tls is not None:
        kwargs = dict(kwargs, ssl=True)
    return pool_class(target.service, target.sentinel_manager(kwargs["socket_timeout"]), is_master=True, **kwargs)


# --- parsing ----------------------------------------------------------------------


def parse_url(url: str) -> RedisTarget:
    """The target a Redis URL names (no TLS files, no password file: see `from_settings`). Raises SettingsError."""
    redacted = redact_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise SettingsError(f"unsupported Redis URL {redacted!r}: use {URL_FORMS}")
    tls, sentinel, cluster = SCHEMES[scheme.lower()]
    if "?" in rest or "#" in rest:
        raise SettingsError(f"Redis URL {redacted!r}: query options are not read; use the redis_* settings")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None  # user@host: a user without a password, as redis-py reads it
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    hosts = tuple(_parse_host(item, default_port, redacted) for item in hostlist.split(",")) if hostlist else ()
    if not hosts:
        if sentinel:
            raise SettingsError(f"Redis URL {redacted!r}: name at least one sentinel host:port")
        hosts = (("127.0.0.1", DEFAULT_PORT),)
    if len(hosts) > 1 and not (sentinel or cluster):
        raise SettingsError(f"Redis URL {redacted!r}: several hosts need redis+sentinel:// (Sentinel) or redis+cluster://")
    segments = [segment for segment in path.split("/") if segment] if path else []
    service = ""
    if sentinel:
        if not segments:
            raise SettingsError(f"Redis URL {redacted!r}: name the Sentinel master after the hosts (/mymaster[/db])")
        service = unquote(segments.pop(0))
    if len(segments) > 1:
        raise SettingsError(f"Redis URL {redacted!r}: too many path segments (expected {URL_FORMS})")
    db = 0
    if segments:
        if not segments[0].isdigit():
            raise SettingsError(f"Redis URL {redacted!r}: the database must be a number, got {segments[0]!r}")
        db = int(segments[0])
    if cluster and db != 0:
        raise SettingsError(f"Redis URL {redacted!r}: a Redis Cluster has only database 0")
    tls_options = RedisTls() if tls else None
    return RedisTarget(hosts, db, service, username, password, None, tls_options, redacted, cluster)


def _parse_host(item: str, default_port: int, redacted: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise SettingsError(f"Redis URL {redacted!r}: malformed host {item!r}")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise SettingsError(f"Redis URL {redacted!r}: empty host in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SettingsError(f"Redis URL {redacted!r}: bad port {port_text!r}")
    return host, int(port_text)


def _check_readable(name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None


def _first_line(path: str, name: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not line:
        raise SettingsError(f"{name}: {path} is empty (its first line is the password)")
    return line
