"""`ringcast ctl`: drive the control plane's operator API from a shell.

Owns the command-line client: one subcommand per API call, readable tables
(or `--json` for scripts), and exit codes a script can rely on: 0 the call
succeeded, 1 it failed (refused, unknown node, unreachable, no leader), 2 the
command line was wrong. A mutation answered with 409 NOT_LEADER is sent once
more to the leader the answer names, but only if that URL is one of the
control replicas the operator configured (`--url`, repeatable, or
`RINGCAST_CONTROL_URL`, comma-separated): the leader's URL comes from Redis,
and the admin token must never go to a URL nobody vouched for. Otherwise the
409 is reported and the token goes nowhere else. Reads (and `top`,
`proxy-config`) go to the first replica that answers, in `--url` order, so
one replica down does not blind a script. It uses only the HTTP API:
no Redis. `top`, the live fleet view, lives in `control.top` (fetching and
drawing) and `control.top_view` (its numbers); here it is one more subcommand
that only reads. `proxy-config haproxy` reads the ring and writes the TLS
proxy's configuration (`control.proxy_config` makes the text): with
`--output FILE` it replaces the file atomically and its exit code says
whether anything changed (0 written, 3 already up to date), so a loop can
reload HAProxy only then.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from control import top
from control.config import ADMIN_TOKEN_ENV
from control.proxy_config import HaproxyOptions, ProxyConfigError, haproxy_config, routes

URL_ENV = "RINGCAST_CONTROL_URL"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_UNCHANGED = 3  # proxy-config --output: the file already held this configuration (nothing written)


class Failed(Exception):
    def __init__(self, message: str, body: dict | None = None) -> None:
        super().__init__(message)
        self.body = body


def same_url(a: str, b: str) -> bool:
    """Whether two base URLs name the same replica (scheme and host case and trailing slashes ignored)."""
    def norm(url: str) -> tuple[str, str, str]:
        parts = urllib.parse.urlsplit(url.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")
    return norm(a) == norm(b)


def call(base_url: str, method: str, path: str, token: str | None, body: dict | None, timeout_s: float,
         known_urls: list[str] | None = None) -> dict:
    """One API call. A 409 NOT_LEADER naming a replica in `known_urls` (other than `base_url`) is sent
    there once; naming any other URL, it fails without sending anything (nor the token) there.
    `known_urls=None` follows nothing (reads, and the one redirected call)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url.rstrip("/") + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        leader = answer.get("leader") or {}
        leader_url = leader.get("url") if isinstance(leader, dict) else None
        if exc.code == 409 and answer.get("error") == "NOT_LEADER" and isinstance(leader_url, str):
            if known_urls is None:
                raise Failed(f"HTTP 409 NOT_LEADER: {base_url}, named leader by the first replica, is not the leader "
                             f"either (it names {leader_url!r}); not following a second time", answer) from None
            known = [url for url in known_urls if not same_url(url, base_url)]
            if any(same_url(url, leader_url) for url in known):
                return call(leader_url, method, path, token, body, timeout_s, known_urls=None)  # once: no further hop
            raise Failed(
                f"HTTP 409 NOT_LEADER: {base_url} is not the leader; it names {leader_url!r}, which is not one of the "
                f"control replicas given with --url ({', '.join(known_urls)}), so the request was not sent there. "
                f"Check that URL, then pass it with --url.", answer) from None
        raise Failed(f"HTTP {exc.code} {answer.get('error', '')}: {answer.get('message', exc.reason)}", answer) from None
    except (urllib.error.URLError, OSError) as exc:
        raise Failed(f"cannot reach the control plane at {base_url}: {exc}") from None


def read(urls: list[str], path: str, timeout_s: float) -> dict:
    """A GET answered by the first replica that can be reached, in the order given (every replica serves
    reads from Redis; no token is sent). An HTTP error is an answer: only an unreachable replica is skipped."""
    failures = []
    for url in urls:
        try:
            return call(url, "GET", path, None, None, timeout_s)
        except Failed as exc:
            if exc.body is not None:
                raise
            failures.append(str(exc))
    raise Failed("; ".join(failures))


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain text table: header, then one line per row; None shows as '-'."""
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)
    grid = [[title for _, title in columns]] + [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in grid)


def _progress(steering: dict | None) -> str | None:
    if not steering:
        return None
    state = "done" if steering.get("done") else "running"
    return f"{steering['kind']} {steering['steered']}/{steering['total']} {state}"


def render(command: str, answer: dict) -> str:
    if command == "nodes":
        rows = []
        for node in answer["nodes"]:
            rss = node.get("rssBytes")
            rows.append({**node, "rssMiB": f"{rss / 2**20:.0f}" if rss else None,
                         "seen": f"{node['lastSeenAgoMs'] / 1000:.1f}s" if node.get("lastSeenAgoMs") is not None else None,
                         "progress": _progress(node.get("steering"))})
        return f"ring epoch {answer['ringEpoch']}\n" + table(rows, [
            ("id", "NODE"), ("health", "HEALTH"), ("state", "STATE"), ("desired", "DESIRED"), ("inRing", "IN RING"),
            ("connections", "CONNS"), ("rooms", "ROOMS"), ("cpuPercent", "CPU%"), ("rssMiB", "RSS MiB"),
            ("seen", "SEEN"), ("progress", "STEERING"), ("url", "URL"),
        ])
    if command == "ring":
        return f"ring epoch {answer['epoch']}, {len(answer['members'])} members\n" + table(
            answer["members"], [("id", "NODE"), ("weight", "WEIGHT"), ("url", "URL")])
    if command == "room":
        owner = answer.get("owner") or {}
        head = f"room {answer['room']}: owner {owner.get('id', '-')} ({owner.get('url', '-')}), ring epoch " \
               f"{answer['ringEpoch']}, {answer['members']} members"
        return head + "\n" + table(answer["hosts"], [("node", "HOSTED ON"), ("members", "MEMBERS")])
    if command == "events":
        rows = [{**e, "detail": json.dumps(e.get("detail"), separators=(",", ":"))} for e in answer["events"]]
        return table(rows, [("seq", "SEQ"), ("ts", "TIME"), ("kind", "KIND"), ("node", "NODE"), ("detail", "DETAIL")])
    return "\n".join(f"{key}: {value}" for key, value in answer.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringcast ctl",
        description="Operate the ringcast control plane. Exit codes: 0 ok, 1 the call failed, 2 usage error.",
    )
    parser.add_argument("--url", action="append", default=None,
                        help=f"control replica base URL, repeatable: requests go to the first; a 409 NOT_LEADER is "
                             f"followed (once, with the token) only to one of these (env {URL_ENV}, comma-separated; "
                             f"default http://127.0.0.1:8600)")
    parser.add_argument("--token", default=os.environ.get(ADMIN_TOKEN_ENV),
                        help=f"admin token for mutations (env {ADMIN_TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="HTTP timeout in seconds (default 10)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("nodes", help="list workers: health, state, ring membership, load")
    sub.add_parser("ring", help="show the current ring and its epoch")
    room = sub.add_parser("room", help="where a room lives: owner, hosting workers, member counts")
    room.add_argument("room")
    drain = sub.add_parser("drain", help="drain a worker: it leaves the ring and steers its clients away")
    drain.add_argument("id")
    drain.add_argument("--window-s", type=float, default=None, help="spread reconnect notices over this window")
    drain.add_argument("--timeout-s", dest="drain_timeout_s", type=float, default=None, help="drain deadline")
    drain.add_argument("--wait", action="store_true", help="wait until the worker reports drained")
    undrain = sub.add_parser("undrain", help="return a drained worker to service")
    undrain.add_argument("id")
    sub.add_parser("rebalance", help="steer clients of rooms whose owner changed to their owner")
    sub.add_parser("events", help="recent membership changes, drains, rebalances").add_argument(
        "--limit", type=int, default=50)
    remove = sub.add_parser("remove", help="forget a dead worker (DELETE /v1/nodes/ID)")
    remove.add_argument("id")
    top.add_parser(sub)
    proxy = sub.add_parser(
        "proxy-config", help="write the TLS proxy's configuration from the current ring (docs/security.md)",
        description="Generate an HAProxy configuration from the ring: TLS on --bind, /w/NAME to each worker "
                    "(NAME from the path of its public URL), /route and /ring to the route service. With --output: "
                    "exit 0 when the file was written, 3 when it already held this configuration, 1 on failure.")
    proxy.add_argument("kind", choices=["haproxy"])
    proxy.add_argument("--cert", required=True, metavar="PEM",
                       help="certificate chain and private key in one PEM file, as HAProxy reads it (`crt`)")
    proxy.add_argument("--bind", default=":443", metavar="ADDRESS:PORT",
                       help="where HAProxy listens for TLS (default :443, every IPv4 address)")
    proxy.add_argument("--route-backend", action="append", default=[], metavar="HOST:PORT",
                       help="a ringcast router answering /route and /ring, repeatable (default: the workers, "
                            "which answer both)")
    proxy.add_argument("--path-prefix", default="/w/",
                       help="public URL path prefix of the workers, /w/ in --public-url 'wss://HOST/w/{node_id}-{index}'"
                            " (default /w/); members whose URL path does not start with it are left out")
    proxy.add_argument("--output", metavar="FILE", default=None,
                       help="write to FILE (atomically: temporary file, then rename) instead of printing")
    proxy.add_argument("--allow-empty", action="store_true",
                       help="write a configuration routing to no worker when none can be routed (refused by default: "
                            "an empty ring is more often a control plane starting than a fleet gone)")
    return parser


def replica_urls(args: argparse.Namespace) -> list[str]:
    """The control replicas the operator named: --url flags, else the environment, else the default."""
    if args.url:
        return args.url
    configured = [url.strip() for url in os.environ.get(URL_ENV, "").split(",") if url.strip()]
    return configured or ["http://127.0.0.1:8600"]


def run(args: argparse.Namespace) -> dict:
    c = args.command
    urls = replica_urls(args)
    base = urls[0]
    get = lambda path: read(urls, path, args.timeout_s)  # noqa: E731
    post = lambda path, body=None: call(base, "POST", path, args.token, body, args.timeout_s, urls)  # noqa: E731
    quote = urllib.request.quote
    if c == "nodes":
        return get("/v1/nodes")
    if c == "ring":
        return get("/v1/ring")
    if c == "room":
        return get(f"/v1/rooms/{quote(args.room, safe='')}")
    if c == "events":
        return get(f"/v1/events?limit={args.limit}")
    if c == "drain":
        body = {k: v for k, v in (("windowS", args.window_s), ("timeoutS", args.drain_timeout_s)) if v is not None}
        answer = post(f"/v1/nodes/{quote(args.id, safe='')}/drain", body)
        if args.wait:
            deadline = time.monotonic() + (args.drain_timeout_s or 600) + 10
            while time.monotonic() < deadline:
                nodes = {n["id"]: n for n in get("/v1/nodes")["nodes"]}
                if nodes.get(args.id, {}).get("state") == "drained":
                    return {**answer, "state": "drained"}
                time.sleep(0.5)
            raise Failed(f"{args.id} did not report drained in time")
        return answer
    if c == "undrain":
        return post(f"/v1/nodes/{quote(args.id, safe='')}/undrain")
    if c == "rebalance":
        return post("/v1/rebalance")
    if c == "remove":
        return call(base, "DELETE", f"/v1/nodes/{quote(args.id, safe='')}", args.token, None, args.timeout_s, urls)
    raise AssertionError(c)


def write_if_changed(path: str, text: str) -> bool:
    """Replace `path` with `text` atomically (temporary file in the same directory, fsync, rename), unless it
    already holds exactly that. Returns whether it wrote. Readers see the old file or the new, never half."""
    try:
        with open(path, encoding="utf-8") as current:
            if current.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".ringcast-proxy-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return True


def proxy_config(args: argparse.Namespace) -> int:
    """`ctl proxy-config haproxy`: read the ring, print or write the configuration."""
    ring = read(replica_urls(args), "/v1/ring", args.timeout_s)
    if not isinstance(ring, dict) or not isinstance(ring.get("members"), list):
        raise Failed("GET /v1/ring did not answer a ring (an object with a members list)")
    options = HaproxyOptions(cert_path=args.cert, bind=args.bind, path_prefix=args.path_prefix,
                             route_backends=tuple(args.route_backend))
    try:
        text = haproxy_config(ring, options)
        routed, skipped = routes(ring, options.path_prefix)
    except ProxyConfigError as exc:
        raise Failed(str(exc)) from None
    if not routed and not args.allow_empty:
        why = "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "") if skipped else "the ring is empty"
        raise Failed(f"no ring member can be routed (ring epoch {ring.get('epoch')}): {why}. Nothing written "
                     f"(--allow-empty writes a configuration routing nowhere)")
    if args.output is None:
        print(text, end="")
        return EXIT_OK
    try:
        changed = write_if_changed(args.output, text)
    except OSError as exc:
        raise Failed(f"cannot write {args.output}: {exc}") from None
    print(f"{args.output}: {'written' if changed else 'unchanged'} ({len(routed)} workers, ring epoch "
          f"{ring.get('epoch')})", file=sys.stderr)
    return EXIT_OK if changed else EXIT_UNCHANGED


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    if args.command == "top":
        try:
            top.validate(args, parser)
        except SystemExit:
            return EXIT_USAGE
        urls = replica_urls(args)
        return top.main_top(args, lambda path: read(urls, path, args.timeout_s), Failed)
    if args.command == "proxy-config":
        try:
            return proxy_config(args)
        except Failed as exc:
            print(f"ringcast ctl proxy-config: {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        answer = run(args)
    except Failed as exc:
        print(f"ringcast ctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(answer, indent=2) if args.json else render(args.command, answer))
    return EXIT_OK
