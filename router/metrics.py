"""Prometheus metrics of one route service process (served on its GET /metrics).

Owns every metric name, label and bucket of `ringcast router`. Conventions
are the worker's (node/metrics.py): base units (seconds), counters end in
`_total`, one registry per process, and every label value the router can
emit is exported as 0 from the start so a dashboard or an alert sees the
series before the first event. It must not know HTTP frameworks or the ring's
internals: the service tells it what happened, `observe` reads a ring's epoch
and size.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import ProcessCollector

from router.ring import Ring

# Every status a `GET /route` answer can have (router/answers.py): found, bad room, no live worker.
ROUTE_STATUSES = ("200", "400", "503")

# A lookup costs about 120 µs of CPU (docs/router.md, "Performance"); the buckets reach well past a stall.
_LOOKUP_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.lookups = Counter("ringcast_router_lookups_total", "GET /route requests answered", registry=r)
        self.answers = Counter(
            "ringcast_router_answers_total", "GET /route answers, by HTTP status (200, 400, 503)", ["status"],
            registry=r,
        )
        self.lookup = Histogram(
            "ringcast_router_lookup_seconds",
            "Time to answer one GET /route (validation, ring lookup, JSON), HTTP parsing excluded",
            buckets=_LOOKUP_BUCKETS_S,
            registry=r,
        )
        self.ring_epoch = Gauge("ringcast_router_ring_epoch", "Epoch of the ring this router answers from", registry=r)
        self.ring_members = Gauge("ringcast_router_ring_members", "Members of that ring", registry=r)
        self.redis_reachable = Gauge(
            "ringcast_router_redis_reachable",
            "0 while the last read of the published ring from Redis failed (the last good ring stays); "
            "1 otherwise, and always 1 with a static ring (--nodes only)",
            registry=r,
        )
        for status in ROUTE_STATUSES:
            self.answers.labels(status)
        self.redis_reachable.set(1)

    def answered(self, status: int, seconds: float) -> None:
        """One GET /route answered with `status` after `seconds`."""
        self.lookups.inc()
        self.answers.labels(str(status)).inc()
        self.lookup.observe(seconds)

    def observe(self, ring: Ring, redis_reachable: bool) -> None:
        """The ring in force and whether Redis answered, sampled when /metrics is read."""
        self.ring_epoch.set(ring.epoch)
        self.ring_members.set(len(ring))
        self.redis_reachable.set(1 if redis_reachable else 0)
