"""The rows of `ringcast ctl top`, computed from what was fetched: no I/O, no clock, no terminal.

Owns turning the control plane's answers (`GET /v1/nodes`, `GET /v1/ring`, `GET /healthz`) and
two samples of each worker's `/metrics` into one row per worker and a header: deliveries per
second (the rate of `ringcast_messages_delivered_total` between the two samples), the p99 of
`ringcast_message_handling_seconds` over the same interval (time to handle one client frame,
publish to the bus included: the latency a publishing client waits for), and human units.
It must not fetch, sleep or print: `control.top` does that and hands it what it got.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

DELIVERED = "ringcast_messages_delivered_total"
LATENCY = "ringcast_message_handling_seconds"  # the histogram whose p99 is shown
P99 = 0.99


@dataclass(frozen=True)
class WorkerSample:
    """One scrape of one worker's /metrics, reduced to what top shows."""

    taken_at_s: float  # monotonic clock of the caller, when the answer arrived
    delivered_total: float
    latency_buckets: tuple[tuple[float, float], ...]  # (upper bound `le` in seconds, cumulative count), ascending


class MetricsMissing(ValueError):
    """A /metrics page without the series top needs (not a ringcast worker, or a renamed metric)."""


def parse_worker_metrics(text: str, taken_at_s: float) -> WorkerSample:
    delivered: float | None = None
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == DELIVERED:
                delivered = (delivered or 0.0) + sample.value
            elif sample.name == LATENCY + "_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    if delivered is None or math.inf not in buckets:
        raise MetricsMissing(f"no {DELIVERED} or {LATENCY} histogram on the page")
    return WorkerSample(taken_at_s, delivered, tuple(sorted(buckets.items())))


def delivery_rate(before: WorkerSample, after: WorkerSample) -> float | None:
    """Deliveries per second between two samples; None when it cannot be told (same instant,
    or the counter went down: the worker restarted in between)."""
    elapsed = after.taken_at_s - before.taken_at_s
    delta = after.delivered_total - before.delivered_total
    if elapsed <= 0 or delta < 0:
        return None
    return delta / elapsed


def quantile_between(before: WorkerSample, after: WorkerSample, q: float = P99) -> float | None:
    """The q-quantile (seconds) of the observations made between two samples, interpolated
    linearly inside its bucket as Prometheus' histogram_quantile does; None when nothing was
    observed (or the worker restarted). Past the last finite bound it answers that bound."""
    old = dict(before.latency_buckets)
    deltas = [(le, count - old.get(le, 0.0)) for le, count in after.latency_buckets]
    if any(delta < 0 for _, delta in deltas):
        return None
    total = deltas[-1][1] if deltas and deltas[-1][0] == math.inf else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, cumulative in deltas:
        if cumulative >= rank:
            if le == math.inf:
                return lower_bound
            in_bucket = cumulative - lower_count
            fraction = (rank - lower_count) / in_bucket if in_bucket > 0 else 1.0
            return lower_bound + (le - lower_bound) * fraction
        lower_bound, lower_count = le, cumulative
    return lower_bound


# --- human units ---------------------------------------------------------------------------

def human_rate(per_s: float | None) -> str:
    if per_s is None:
        return "-"
    if per_s >= 1e6:
        return f"{per_s / 1e6:.1f}M"
    if per_s >= 1e4:
        return f"{per_s / 1e3:.0f}k"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f}k"
    return f"{per_s:.1f}" if per_s < 100 else f"{per_s:.0f}"


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def human_bytes(count: float | None) -> str:
    if count is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f}{unit}" if count < 10 * size else f"{count / size:.0f}{unit}"
    return f"{count:.0f}B"


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# --- rows ----------------------------------------------------------------------------------

UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Row:
    """One worker, every cell already text."""

    worker: str
    health: str
    state: str
    connections: str
    rooms: str
    deliveries_per_s: str  # or UNREACHABLE when its /metrics did not answer
    p99: str
    cpu: str
    rss: str
    in_ring: str
    problem: str | None = None  # why its metrics are missing, for the footer


@dataclass(frozen=True)
class Header:
    ring_epoch: int | None
    leader: str
    workers: int
    alive: int
    connections: int
    rooms: int
    deliveries_per_s: float
    unreachable: int

    def line(self) -> str:
        epoch = "-" if self.ring_epoch is None else str(self.ring_epoch)
        line = (f"ring epoch {epoch} | leader {self.leader} | workers {self.alive}/{self.workers} alive | "
                f"conns {self.connections} | rooms {self.rooms} | deliveries/s {human_rate(self.deliveries_per_s)}")
        return line + (f" | {self.unreachable} unreachable" if self.unreachable else "")


@dataclass
class View:
    header: Header
    rows: list[Row] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"{row.worker}: {row.problem}" for row in self.rows if row.problem]


Scrape = WorkerSample | str  # a sample, or why there is none (the worker did not answer in time, ...)


def leader_name(healthz: dict | None) -> str:
    replica = (healthz or {}).get("leaderReplica")
    if isinstance(replica, dict) and replica.get("id"):
        return str(replica["id"])
    return "none"


def build_view(nodes: dict, ring: dict | None, healthz: dict | None,
               before: dict[str, Scrape], after: dict[str, Scrape]) -> View:
    """Rows sorted by worker id: `nodes` is the answer of GET /v1/nodes, `ring` of GET /v1/ring
    (None if it failed), `healthz` of GET /healthz; `before`/`after` map worker id to its two scrapes."""
    rows: list[Row] = []
    total_rate = 0.0
    for node in sorted(nodes.get("nodes", []), key=lambda n: n["id"]):
        worker = node["id"]
        first, second = before.get(worker), after.get(worker)
        problem = None
        rate = p99 = None
        if isinstance(second, WorkerSample):
            if isinstance(first, WorkerSample):
                rate = delivery_rate(first, second)
                p99 = quantile_between(first, second)
        else:
            problem = second if isinstance(second, str) else "no metrics URL"
        total_rate += rate or 0.0
        rows.append(Row(
            worker=worker,
            health=_text(node.get("health")),
            state=_text(node.get("state")),
            connections=_text(node.get("connections")),
            rooms=_text(node.get("rooms")),
            deliveries_per_s=UNREACHABLE if problem else human_rate(rate),
            p99="-" if problem else human_seconds(p99),
            cpu=_text(None if node.get("cpuPercent") is None else float(node["cpuPercent"])),
            rss=human_bytes(node.get("rssBytes")),
            in_ring="yes" if node.get("inRing") else "no",
            problem=problem,
        ))
    listed = nodes.get("nodes", [])
    epoch = (ring or {}).get("epoch", nodes.get("ringEpoch"))
    header = Header(
        ring_epoch=epoch,
        leader=leader_name(healthz),
        workers=len(listed),
        alive=sum(1 for n in listed if n.get("health") == "alive"),
        connections=sum(n.get("connections") or 0 for n in listed),
        rooms=sum(n.get("rooms") or 0 for n in listed),
        deliveries_per_s=total_rate,
        unreachable=sum(1 for row in rows if row.problem),
    )
    return View(header, rows)


COLUMNS: tuple[tuple[str, str], ...] = (
    ("worker", "WORKER"), ("health", "HEALTH"), ("state", "STATE"), ("in_ring", "RING"),
    ("connections", "CONNS"), ("rooms", "ROOMS"), ("deliveries_per_s", "DELIV/S"), ("p99", "P99"),
    ("cpu", "CPU%"), ("rss", "RSS"),
)


def metrics_url(worker_url: str | None, address: str = "") -> str | None:
    """A worker's /metrics: at its internal address (HOST:PORT -> http://HOST:PORT/metrics), its public
    URL possibly being a proxy's; without one (a worker older than the field), from the URL it
    advertises (ws://host:port/ws -> http://host:port/metrics)."""
    if address:
        return f"http://{address}/metrics"
    if not worker_url or "://" not in worker_url:
        return None
    scheme, rest = worker_url.split("://", 1)
    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("http", "https"):
        return None
    return f"{scheme}://{rest.split('/', 1)[0]}/metrics"
