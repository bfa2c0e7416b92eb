"""`ringcast ctl top`: a live terminal view of the fleet, for an operator without Grafana at hand.

Owns the fetching and the drawing: each refresh reads the control plane (GET /v1/nodes,
GET /v1/ring, GET /healthz; reads only, so no token is sent) and scrapes every worker's
/metrics concurrently, each with its own short timeout, so one stuck worker costs one timeout,
not one per worker, and shows as unreachable instead of stopping the view. The numbers
themselves come from `control.top_view` (pure). Drawing is rich: a `Live` table redrawn in
place, or with `--once` one plain snapshot (no cursor movement, fit for a pipe or a file).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from control.top_view import COLUMNS, Scrape, View, build_view, metrics_url, parse_worker_metrics

Get = Callable[[str], dict]  # GET a control-plane path, answer its JSON or raise


def scrape(url: str | None, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> Scrape:
    """One worker's /metrics reduced to a sample, or why there is none (never raises)."""
    if url is None:
        return "no metrics URL"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
        return parse_worker_metrics(text, clock())
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url}: {reason}"


class Fleet:
    """What top knows between refreshes: the last answers and each worker's last scrape."""

    def __init__(self, get: Get, worker_timeout_s: float, pool: concurrent.futures.Executor) -> None:
        self.get = get
        self.worker_timeout_s = worker_timeout_s
        self.pool = pool
        self.previous: dict[str, Scrape] = {}

    def _scrape_all(self, nodes: dict) -> dict[str, Scrape]:
        futures = {node["id"]: self.pool.submit(scrape, metrics_url(node.get("url"), node.get("address") or ""), self.worker_timeout_s)
                   for node in nodes.get("nodes", [])}
        return {worker: future.result() for worker, future in futures.items()}

    def prime(self) -> None:
        """The first scrape, against which the first refresh computes rates."""
        self.previous = self._scrape_all(self.get("/v1/nodes"))

    def refresh(self) -> View:
        """A new view; raises what `get` raises when the control plane does not answer /v1/nodes."""
        nodes = self.get("/v1/nodes")
        current = self._scrape_all(nodes)
        ring = self._optional("/v1/ring")
        healthz = self._optional("/healthz")
        view = build_view(nodes, ring, healthz, self.previous, current)
        self.previous = current
        return view

    def _optional(self, path: str) -> dict | None:
        try:
            return self.get(path)
        except Exception:  # noqa: BLE001 - the header shows '-' for what it could not read
            return None


def render(view: View, title_note: str = "") -> Group:
    # One space between columns and the worker id never cut: the view fits an 80-column terminal.
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    id_width = max([len(row.worker) for row in view.rows] + [len("WORKER")])
    for key, title in COLUMNS:
        table.add_column(title, no_wrap=True, justify="right" if key in _NUMERIC else "left",
                         min_width=id_width if key == "worker" else None)
    for row in view.rows:
        cells = [getattr(row, key) for key, _ in COLUMNS]
        style = "red" if row.problem or row.health == "dead" else "yellow" if row.state not in ("active", "-") else None
        table.add_row(*cells, style=style)
    parts = [Text(view.header.line() + title_note, style="bold"), table]
    parts += [Text(problem, style="red") for problem in view.problems]
    return Group(*parts)


_NUMERIC = {"connections", "rooms", "deliveries_per_s", "p99", "cpu", "rss"}


def _error(message: str) -> Group:
    return Group(Text(f"control plane: {message}", style="bold red"))


def run_top(args: argparse.Namespace, get: Get, failed: type[Exception]) -> int:
    """Draw until `--iterations` refreshes are done or Ctrl-C (exit 0); `--once`: one plain snapshot.

    With `--once` a control plane that does not answer is exit 1; in the live view it shows as a
    red line and the view keeps trying at the next refresh (a replica restarting is no reason to die).
    """
    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: rich would assume 80 columns and cut the table
        console = Console(highlight=False, width=160)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="top-scrape")
    fleet = Fleet(get, args.worker_timeout_s, pool)
    try:
        if args.once:
            fleet.prime()
            time.sleep(args.interval)
            view = fleet.refresh()
            if args.json:
                print(json.dumps({"header": view.header.__dict__, "rows": [row.__dict__ for row in view.rows]},
                                 indent=2))
            else:
                console.print(render(view))
            return 0
        done = 0
        with Live(Text("ringcast ctl top: first sample..."), console=console, auto_refresh=False,
                  redirect_stderr=False) as live:
            try:
                fleet.prime()
            except failed as exc:
                live.update(_error(str(exc)), refresh=True)
            while args.iterations == 0 or done < args.iterations:
                time.sleep(args.interval)
                try:
                    frame = render(fleet.refresh(), f"   (every {args.interval:g}s; P99: frame handling; Ctrl-C quits)")
                except failed as exc:
                    frame = _error(str(exc))
                live.update(frame, refresh=True)
                done += 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser(
        "top", help="live view of the fleet: state, load, deliveries/s, p99, CPU, RSS, ring epoch",
        description=(
            "A live table of every worker, redrawn every --interval seconds, sorted by worker id, under a "
            "header with the ring epoch, the leader replica and fleet totals. From the control plane: "
            "health, state, ring membership, connections, rooms, CPU% and RSS (from heartbeats). From "
            "each worker's /metrics, scraped concurrently: DELIV/S, the rate of "
            "ringcast_messages_delivered_total (message frames queued to members) over the last interval, "
            "and P99, the 99th percentile of ringcast_message_handling_seconds (time to handle one "
            "client frame, publish to the bus included) over the same interval, '-' when no frame was "
            "handled. A worker whose /metrics does not answer within --worker-timeout-s shows as "
            "'unreachable'. Ctrl-C quits with exit 0. Only reads: no admin token is needed or sent; the "
            "replica asked is the first --url (or RINGCAST_CONTROL_URL, default http://127.0.0.1:8600), "
            "any replica answers reads."),
    )
    top.add_argument("--interval", type=float, default=1.0,
                     help="seconds between refreshes, and between the two samples a rate is taken from (default 1.0)")
    top.add_argument("--iterations", type=int, default=0,
                     help="stop after N refreshes (default 0: until Ctrl-C)")
    top.add_argument("--once", action="store_true",
                     help="print one snapshot as a plain table and exit (two samples --interval apart); for "
                          "scripts and terminals without cursor control; `ringcast ctl --json top --once`: JSON")
    top.add_argument("--worker-timeout-s", type=float, default=0.8,
                     help="how long one worker's /metrics may take before it shows as unreachable (default 0.8)")


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.interval <= 0 or args.iterations < 0 or args.worker_timeout_s <= 0:
        parser.error("top: --interval and --worker-timeout-s must be > 0, --iterations >= 0")


def main_top(args: argparse.Namespace, get: Get, failed: type[Exception]) -> int:
    try:
        return run_top(args, get, failed)
    except failed as exc:
        print(f"ringcast ctl top: {exc}", file=sys.stderr)
        return 1
