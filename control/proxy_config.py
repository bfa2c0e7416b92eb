"""The TLS proxy's configuration, generated from the ring: HAProxy in front of the workers.

Owns turning a ring (the JSON of `GET /v1/ring`: members with `id`, public
`url`, internal `address`) into an HAProxy configuration: one TLS frontend,
one backend per worker chosen by the path of the worker's public URL
(`/w/<name>`, rewritten to `/ws`, query string kept), `/route` and `/ring`
sent to the route service (routers, or by default the workers, which answer
both), `X-Forwarded-For` appended for the workers' `--trusted-proxies` rule.
It is pure: a dict in, text out. It must not fetch the ring, write files or
start HAProxy (`control.ctl proxy-config` does the first two; the operator's
reload loop the last, docs/security.md "Behind a proxy").

The text depends only on what routing needs (paths, addresses, options), not
on the ring's epoch or the members' weights, so regenerating from a ring that
changed nowhere that matters gives the same bytes and no reload.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")  # a worker's path name: safe in a URL path and an HAProxy identifier
HOST_PORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")
PEM_PATH_FORBIDDEN = re.compile(r"[\s\"'#\\]")  # would break (or comment out part of) an HAProxy config line
NOT_FOUND_BODY = '{"error":"UNKNOWN_WORKER","message":"no worker has this path; ask /route?room=ROOM for its URL"}'


class ProxyConfigError(ValueError):
    """The ring or the options cannot make a working configuration (the message says why)."""


@dataclass(frozen=True)
class HaproxyOptions:
    cert_path: str  # PEM with the certificate chain and its private key (HAProxy's `crt`)
    bind: str = ":443"  # ADDRESS:PORT the TLS frontend listens on (`:443`: every IPv4 address)
    path_prefix: str = "/w/"  # a member's public URL path is PREFIX + name
    route_backends: tuple[str, ...] = ()  # routers' HOST:PORT for /route and /ring; empty: the workers
    tunnel_timeout_s: int = 3600  # an upgraded WebSocket idle this long is cut (workers ping every 30 s by default)
    client_timeout_s: int = 30  # client inactivity before the upgrade (and HTTP keep-alive)
    connect_timeout_s: int = 5  # connecting to a worker or router
    http_request_timeout_s: int = 10  # a client's whole request header must arrive within this (slowloris)
    hard_stop_after_s: int = 3600  # after a reload, the old process's WebSockets are cut this long after it
    check_interval_s: int = 2  # health checks of each worker and router


@dataclass(frozen=True)
class Route:
    name: str  # the path name: /w/<name>
    member_id: str
    address: str  # HOST:PORT HAProxy connects to


def _check_host_port(value: str, what: str) -> str:
    value = value.strip()
    match = HOST_PORT_RE.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ProxyConfigError(f"{what} {value!r} is not HOST:PORT (IPv6 as [ADDRESS]:PORT)")
    return value


def _identifier(text: str) -> str:
    """An HAProxy server/backend name: letters, digits, '-', '_', '.', ':' only."""
    return re.sub(r"[^A-Za-z0-9._:-]", "_", text)


def routes(ring: dict, path_prefix: str) -> tuple[list[Route], list[str]]:
    """The members HAProxy can route to, sorted by name, and a comment line for each it cannot.

    Raises ProxyConfigError when two members share a path (a --public-url template whose path is
    not unique per worker): the proxy could send a client to the wrong worker."""
    chosen: dict[str, Route] = {}
    skipped: list[str] = []
    for member in ring.get("members") or []:
        if not isinstance(member, dict):
            skipped.append(f"{member!r:.60}: not a ring member object")
            continue
        member_id = str(member.get("id", ""))
        url = str(member.get("url", ""))
        address = str(member.get("address", "") or "")
        path = urllib.parse.urlsplit(url).path
        if not path.startswith(path_prefix):
            skipped.append(f"{member_id}: public URL {url!r} does not start with {path_prefix!r}")
            continue
        name = path[len(path_prefix):]
        if not NAME_RE.match(name):
            skipped.append(f"{member_id}: path name {name!r} of {url!r} is not [A-Za-z0-9._-]+")
            continue
        if not address:
            skipped.append(f"{member_id}: no internal address in the ring")
            continue
        try:
            _check_host_port(address, "address")
        except ProxyConfigError as exc:
            skipped.append(f"{member_id}: {exc}")
            continue
        if name in chosen:
            raise ProxyConfigError(
                f"members {chosen[name].member_id} and {member_id} both have the path {path!r}: "
                "the --public-url template must give every worker its own path (use {node_id} and {index})"
            )
        chosen[name] = Route(name, member_id, address)
    return [chosen[name] for name in sorted(chosen)], skipped


def haproxy_config(ring: dict, options: HaproxyOptions) -> str:
    """The whole haproxy.cfg for `ring`. Raises ProxyConfigError on bad options or clashing paths."""
    prefix = options.path_prefix
    if not (prefix.startswith("/") and prefix.endswith("/")):
        raise ProxyConfigError(f"path prefix {prefix!r} must start and end with '/' (like /w/)")
    if not options.cert_path or PEM_PATH_FORBIDDEN.search(options.cert_path):
        raise ProxyConfigError(
            f"certificate path {options.cert_path!r} must be non-empty, without spaces, quotes or '#'")
    bind = options.bind.strip()
    if not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*):[0-9]{1,5}$", bind):
        raise ProxyConfigError(f"bind {bind!r} is not ADDRESS:PORT (or :PORT for every IPv4 address)")
    route_backends = [_check_host_port(b, "route backend") for b in options.route_backends]
    members, skipped = routes(ring, prefix)

    out: list[str] = [
        "# Generated by `ringcast ctl proxy-config haproxy` from the ring: regenerate it, do not edit it.",
        "# Workers must run with --trusted-proxies naming this proxy's address (docs/security.md).",
        "",
        "global",
        f"    hard-stop-after {options.hard_stop_after_s}s  # after a reload, the old process's WebSockets end by then",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        "    log stdout format raw daemon",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    # Path only: upgrade requests may carry ?token=, which must not reach the logs.",
        '    log-format "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc %HM %HP"',
        f"    timeout connect {options.connect_timeout_s}s",
        f"    timeout client {options.client_timeout_s}s",
        f"    timeout server {options.client_timeout_s}s",
        f"    timeout http-request {options.http_request_timeout_s}s",
        f"    timeout tunnel {options.tunnel_timeout_s}s  # an upgraded WebSocket, both ways",
        "    timeout client-fin 10s",
        "",
        "frontend ringcast",
        f"    bind {bind} ssl crt {options.cert_path} alpn http/1.1",
        "    option forwardfor  # appends X-Forwarded-For: the address this proxy saw",
        "    http-request set-header X-Forwarded-Proto https",
        "    use_backend ringcast_route if { path /route /ring }",
    ]
    for route in members:
        out.append(f"    use_backend w_{route.name} if {{ path {prefix}{route.name} }}")
    for line in skipped:
        out.append(f"    # skipped {line}")
    out += ["    default_backend ringcast_unknown_path", ""]

    out += ["backend ringcast_route"]
    if route_backends:
        out += ["    # the route service: ringcast router processes", "    option httpchk GET /healthz"]
        servers = [(f"router{i}", address) for i, address in enumerate(route_backends)]
    else:
        out += ["    # every worker answers /route and /ring from the ring; only active ones (/readyz) are asked",
                "    option httpchk GET /readyz"]
        servers = [(_identifier(route.member_id), route.address) for route in members]
    out += ["    http-check expect status 200", "    balance roundrobin"]
    out += [f"    server {name} {address} check inter {options.check_interval_s}s" for name, address in servers]
    out.append("")

    for route in members:
        out += [
            f"backend w_{route.name}",
            f"    # {route.member_id}",
            "    http-request set-path /ws  # the query string (?token=, ?codec=) is kept",
            "    option httpchk GET /healthz  # alive; a draining worker still answers its own 503 NOT_ACCEPTING",
            "    http-check expect status 200",
            f"    server {_identifier(route.member_id)} {route.address} check inter {options.check_interval_s}s",
            "",
        ]
    out += [
        "backend ringcast_unknown_path",
        f"    http-request return status 404 content-type application/json string '{NOT_FOUND_BODY}'",
        "",
    ]
    return "\n".join(out)
