"""Prometheus metrics of one control replica (served on its GET /metrics).

Owns the control plane's metric names. Base units, counters end in `_total`.
Counters count what this replica did while leading; gauges show the state
this replica last observed (followers observe on each read, not each tick).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from common.keys import ALIVE, DEAD


class ControlMetrics:
    def __init__(self, replica_id: str) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_* (CPU, RSS, fds) of the replica, like workers and routers
        self.leader = Gauge("ringcast_control_leader", "1 while this replica holds the leader lease", registry=r)
        self.ring_epoch = Gauge("ringcast_control_ring_epoch", "Epoch of the ring last published or read", registry=r)
        self.ring_members = Gauge("ringcast_control_ring_members", "Members of that ring", registry=r)
        self.nodes = Gauge("ringcast_control_nodes", "Known workers, by health", ["health"], registry=r)
        self.declared_dead = Counter(
            "ringcast_control_nodes_declared_dead_total", "Workers declared dead (silent past dead_after_s)", registry=r
        )
        self.ring_publications = Counter(
            "ringcast_control_ring_publications_total", "New ring epochs published", registry=r
        )
        self.rebalances = Counter("ringcast_control_rebalances_total", "Rebalances started", registry=r)
        self.ticks = Counter(
            "ringcast_control_ticks_total", "Leader ticks completed (periodic, and those a mutation runs)", registry=r
        )
        self.api_requests = Counter(
            "ringcast_control_api_requests_total", "Operator API requests, by route and status", ["route", "status"],
            registry=r,
        )
        Gauge("ringcast_control_info", "Replica identity", ["replica"], registry=r).labels(replica_id).set(1)

    def observe(self, ring, records: dict) -> None:
        self.ring_epoch.set(ring.epoch)
        self.ring_members.set(len(ring))
        healths = [record.health for record in records.values()]
        for health in (ALIVE, DEAD):
            self.nodes.labels(health).set(healths.count(health))
