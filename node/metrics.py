"""Prometheus metrics of one worker process (served on its own GET /metrics).

Owns every metric name, label and bucket of the edge node. Conventions:
base units (seconds, bytes), counters end in `_total`. Each worker has its
own registry and endpoint; docs/operations.md shows how to scrape them all.
Hot paths increment by batch (one `inc(n)` per fan-out, not per member),
and the metrics a published message moves are loop metrics (`LoopCounter`,
`LoopHistogram`): changed by the event loop's thread alone, without the lock
prometheus_client's own take on every change, and read by the registry at
each scrape.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from typing import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from node import protocol  # the error codes and resume outcomes are the protocol's

# Every label value the worker can emit, exported as 0 from the start: a dashboard
# or alert sees the series before the first event, and a check for a value that
# does not exist fails instead of reading as 0.
CLOSE_REASONS = (
    "client", "error", "too_big", "flood", "slow_consumer", "heartbeat_timeout", "token_expired",
    "join_buffer_overflow", "shutdown", "drain", "rebalance",
)
REJECT_REASONS = (
    "ORIGIN_NOT_ALLOWED", "TOO_MANY_CONNECTIONS_FROM_IP", "TOO_MANY_REFUSED_UPGRADES_FROM_IP",
    "ACCEPT_RATE_EXCEEDED", "UNAUTHORIZED",
    "NOT_ACCEPTING", "WORKER_FULL",
)
FRAME_TYPES = ("publish", "join", "leave", "history", "ping", "refresh", "invalid")

_LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopCount:
    """One series of a LoopCounter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopCounter:
    """A counter only the event loop's thread changes: `inc` is one float add (prometheus_client's Counter
    takes a lock per `inc`, about 0.4 µs). Exposed like a Counter: `<name>_total`, by label if it has any."""

    __slots__ = ("name", "documentation", "labelnames", "value", "_series")

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry,
                 labelnames: Sequence[str] = ()) -> None:
        self.value = 0.0  # without labels
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._series: dict[tuple[str, ...], LoopCount] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopCount:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = LoopCount()
        return series

    def inc(self, amount: float = 1.0) -> None:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels: inc() one of its labels()")
        self.value += amount

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        if self.labelnames:
            for values, series in self._series.items():
                family.add_metric(list(values), series.value)
        else:
            family.add_metric([], self.value)
        yield family


class LoopHistogram:
    """A histogram only the event loop's thread changes: `observe` is a bisect and two adds, no lock.
    Exposed like a Histogram: `_bucket` (cumulative, `le` inclusive), `_count`, `_sum`."""

    __slots__ = ("name", "documentation", "_bounds", "_counts", "_sum")

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"{name}: buckets must be distinct and increasing, got {buckets}")
        self.name, self.documentation = name, documentation
        self._bounds = [float(b) for b in buckets]  # +Inf is implied, the last count
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        self._sum += amount
        self._counts[bisect_left(self._bounds, amount)] += 1  # the first bucket whose bound is >= amount

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(floatToGoString, self._bounds), "+Inf"], self._counts):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self._sum)


class NodeMetrics:
    def __init__(self, worker_id: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        r = self.registry
        labels = {"worker": worker_id}
        self.connections = Gauge(
            "ringcast_connections", "Open WebSocket connections", registry=r
        )
        self.connections_opened = Counter(
            "ringcast_connections_opened_total", "WebSocket connections accepted", registry=r
        )
        self.connections_closed = Counter(
            "ringcast_connections_closed_total", "WebSocket connections closed, by reason", ["reason"], registry=r
        )
        self.connections_rejected = Counter(
            "ringcast_connections_rejected_total",
            "Upgrade requests refused before or right after the handshake, by reason",
            ["reason"],
            registry=r,
        )
        # Moved by every published message: loop metrics (no lock).
        self.messages_received = LoopCounter(
            "ringcast_messages_received_total", "Client frames received, by type", r, ["type"]
        )
        self.messages_published = LoopCounter(
            "ringcast_messages_published_total", "Messages published to the bus", r
        )
        self.bus_messages_received = LoopCounter(
            "ringcast_bus_messages_received_total", "Messages received from the bus", r
        )
        self.messages_delivered = LoopCounter(
            "ringcast_messages_delivered_total", "Message frames queued to members (one per member)", r
        )
        self.message_handling = LoopHistogram(
            "ringcast_message_handling_seconds", "Time to handle one client frame, publish included",
            _LATENCY_BUCKETS_S, r,
        )
        self.errors = Counter("ringcast_errors_total", "Error frames sent, by code", ["code"], registry=r)
        self.bus_publish = LoopHistogram("ringcast_bus_publish_seconds", "Bus publish latency", _LATENCY_BUCKETS_S, r)
        self.bus_connected = Gauge("ringcast_bus_connected", "1 while the bus subscriber is connected", registry=r)
        self.bus_reconnects = Counter("ringcast_bus_reconnects_total", "Bus subscriber (re)connections", registry=r)
        self.rooms_hosted = Gauge("ringcast_rooms_hosted", "Rooms with at least one local member", registry=r)
        self.outbound_buffer = Gauge(
            "ringcast_outbound_buffer_bytes", "Bytes waiting in user-space socket buffers (sampled)", registry=r
        )
        self.slow_consumer_disconnects = Counter(
            "ringcast_slow_consumer_disconnects_total", "Connections closed for exceeding max_outbound_bytes", registry=r
        )
        self.rate_limited = Counter(
            "ringcast_rate_limited_messages_total", "Client frames refused by the rate limit", registry=r
        )
        self.loop_lag = Histogram(
            "ringcast_event_loop_lag_seconds",
            "How late a periodic timer fires: event-loop responsiveness",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.gap_filled_messages = Counter(
            "ringcast_gap_filled_messages_total",
            "Messages missed during a bus outage and delivered from history after it",
            registry=r,
        )
        self.resumes = Counter(
            "ringcast_resumes_total",
            "Joins with `since`, by outcome: recovered, or the reason recovery was incomplete",
            ["outcome"],
            registry=r,
        )
        self.restarts = Gauge(
            "ringcast_worker_restarts", "Times the supervisor has restarted this worker slot", registry=r
        )
        self.gc_threshold = Gauge(
            "ringcast_gc_threshold",
            "Net allocations between two youngest-generation garbage collections (gc.get_threshold()[0]; --gc-threshold)",
            registry=r,
        )
        self.gc_threshold.set_function(lambda: gc.get_threshold()[0])
        self.gc_frozen_objects = Gauge(
            "ringcast_gc_frozen_objects",
            "Objects the garbage collector no longer walks (gc.get_freeze_count(); --gc-freeze)",
            registry=r,
        )
        self.gc_frozen_objects.set_function(gc.get_freeze_count)
        self._export_known_labels()
        self.info = Gauge("ringcast_worker_info", "Worker identity", ["worker"], registry=r)
        self.info.labels(**labels).set(1)

    def _export_known_labels(self) -> None:
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for reason in REJECT_REASONS:
            self.connections_rejected.labels(reason)
        for frame_type in FRAME_TYPES:
            self.messages_received.labels(frame_type)
        for code in protocol.ErrorCode:
            self.errors.labels(code.value)
        for outcome in ("recovered", *protocol.RECOVERY_REASONS):
            self.resumes.labels(outcome)
