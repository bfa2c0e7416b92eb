"""The drills' fleet: a whole ringcast cluster on three hosts made of network namespaces.

Owns the layout (host i is 198.18.0.i, or 198.18.N.i when another fleet
already uses 198.18.0.0/24; chaos/netns.py builds them):

- host1: redis-server, bound to 198.18.0.1 only (no persistence), and a node;
- host2: control replica A and a node;
- host3: control replica B and a node. B starts first and is waited for
  until it leads, so cutting host3 also cuts the leader off from Redis;
- every node binds its workers to 0.0.0.0 inside its host, with no
  --advertise-host: the node finds its host's address itself (the only
  non-loopback address in the namespace), so worker ids are
  `198.18.0.i:PORT` exactly when that default works; the same ports on
  every host (separate network stacks);
- the drill's clients stay in the root namespace and reach the hosts through
  the bridge (source 198.18.0.254).

It also owns the fleet's views a scenario needs: which host serves a URL,
the control plane's ring and its leader, and asking a replica from inside
its own host (what a cut host still tells itself). Stopping is the
DrillCluster's order (nodes, then the control replicas, then Redis), then
the fleet itself is removed, namespaces, veths and bridge, whatever failed.

It must not inject faults (scenarios do) nor start processes other than
through chaos/cluster.py.
"""

from __future__ import annotations

import secrets
import urllib.request
from urllib.parse import urlparse

from chaos.cluster import ControlProcess, NodeProcess, RedisServer, metric_value
from chaos.drill.client import LIVENESS_PING_AFTER_S
from chaos.drill.cluster import DRILL_NODE_FLAGS, DrillCluster
from chaos.eventually import eventually_blocking
from chaos.netns import Host, NetnsFleet
from router.ring import Ring

FLEET_HOSTS = 3
REDIS_PORT = 6379
CONTROL_PORT = 8600
NODE_PORT = 8700
# Nodes bind the wildcard and advertise their host's address (the production layout on a real host).
NODE_BIND_HOST = "0.0.0.0"
# The control plane as the fleet runs it: failure detection and lease at the defaults of control/config.py,
# written out so reports say what they were measured with; the rebalance window (drain_window_s) shortened from
# 5 s to 2 s so a drill's rebalance after a rejoin ends sooner.
FLEET_CONTROL_FLAGS = ["--dead-after-s", "3", "--rejoin-hold-down-s", "5", "--lease-s", "3",
                       "--lease-renew-interval-s", "0.5", "--drain-window-s", "2", "--log-level", "warning"]


# Nodes as in production: a join for a room another worker owns is served and answered with a `moved` hint, which
# members follow, so before a fault every member sits on its room's owner (chaos/drill/fleet.py room_prefix makes
# every worker own rooms); later flags win over DRILL_NODE_FLAGS.
FLEET_NODE_FLAGS = ["--placement-hint", "hint"]


class FleetCluster(DrillCluster):
    """A DrillCluster whose processes run on the hosts of a NetnsFleet; `controls` = [A (host2), B (host3)]."""

    client_liveness_s = LIVENESS_PING_AFTER_S  # links get cut here: clients must notice silence themselves

    def __init__(self, netns: NetnsFleet, workers_per_node: int) -> None:
        super().__init__([], "", owned=True)
        self.netns = netns
        self.workers_per_node = workers_per_node
        self.controls: list[ControlProcess] = []
        self.admin_token = secrets.token_hex(16)

    @classmethod
    def start(cls, workers_per_node: int = 1, node_flags: list[str] | None = None) -> "FleetCluster":
        """Build the fleet and start everything on it; on any failure stop what started and remove the fleet."""
        netns = NetnsFleet(FLEET_HOSTS)
        netns.build()  # raises FleetUnavailable (what is missing) before anything else exists
        cluster = cls(netns, workers_per_node)
        try:
            cluster._start_processes(node_flags or [])
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_processes(self, node_flags: list[str]) -> None:
        host1, host2, host3 = self.netns.hosts
        self.redis = RedisServer(port=REDIS_PORT, host=host1.address, prefix=self.netns.prefix(host1),
                                 extra_args=["--protected-mode", "no"])  # reached from other hosts, no password
        self.redis.start()
        self.redis_url = self.redis.url
        for host in (host3, host2):  # B first: it takes the lease, A follows
            replica = ControlProcess(
                port=CONTROL_PORT, redis_url=self.redis_url, admin_token=self.admin_token, host=host.address,
                prefix=self.netns.prefix(host),
                args=["--replica-id", f"control-{host.name}", "--advertise-url", f"http://{host.address}:{CONTROL_PORT}",
                      *FLEET_CONTROL_FLAGS])
            self.controls.insert(0, replica)
            replica.start()
            if host is host3:
                eventually_blocking(replica.is_leader, what="control replica B (host3) to lead", timeout_s=20)
        for host in self.netns.hosts:
            node = NodeProcess(port=NODE_PORT, workers=self.workers_per_node, host=host.address,
                               bind_host=NODE_BIND_HOST, prefix=self.netns.prefix(host),
                               args=["--redis", self.redis_url, *DRILL_NODE_FLAGS, *FLEET_NODE_FLAGS, *node_flags])
            self.nodes.append(node)
            node.start()
            self.urls += [node.ws_url(i) for i in range(node.workers)]
        expected = set(self.worker_ids())
        eventually_blocking(lambda: set(self.ring_ids()) == expected,
                            what=f"the control plane's ring to hold every worker {sorted(expected)}", timeout_s=30)

    # --- views -------------------------------------------------------------------------------

    @property
    def control_a(self) -> ControlProcess:
        return self.controls[0]

    @property
    def control_b(self) -> ControlProcess:
        return self.controls[1]

    def host_of_url(self, url: str) -> Host:
        return self.netns.host(urlparse(url).hostname)

    def node_on(self, host: Host) -> NodeProcess:
        return next(n for n in self.nodes if n.host == host.address)

    def worker_ids(self, host: Host | None = None) -> list[str]:
        """Worker ids (`ADDRESS:PORT`) of every node, or of the node on `host`."""
        return [f"{n.host}:{port}" for n in self.nodes if host is None or n.host == host.address for port in n.ports]

    def ring(self) -> dict:
        """The ring the control plane publishes, read through replica A (host2, never cut by a drill)."""
        status, body = self.control_a.get("/v1/ring")
        return body if status == 200 else {}

    def ring_ids(self) -> list[str]:
        return sorted(m["id"] for m in self.ring().get("members", []))

    def leader_id(self) -> str | None:
        """The replica holding the lease, as Redis says (through replica A)."""
        status, body = self.control_a.get("/healthz")
        holder = body.get("leaderReplica") if status == 200 else None
        return holder.get("id") if isinstance(holder, dict) else None

    def replica_says_it_leads(self, replica: ControlProcess, host: Host) -> bool | None:
        """Whether `replica` believes it leads now (`ringcast_control_leader` on its /metrics, which reads no
        Redis, unlike /healthz), asked from inside its own host: reachable even while that host is cut off."""
        def ask() -> bool:
            with urllib.request.urlopen(replica.url + "/metrics", timeout=2) as response:
                return metric_value(response.read().decode(), "ringcast_control_leader") == 1
        try:
            return self.netns.call_in(host, ask, timeout_s=4)
        except (OSError, TimeoutError, ValueError, LookupError):
            return None

    def room_prefix(self, base: str, rooms: int) -> str:
        """`base` plus a random token such that every worker of the ring owns at least one of the rooms
        `<prefix>0 .. <prefix>{rooms-1}` (when there are at least as many rooms as workers).

        Members follow `moved` hints to their room's owner, so a worker that owns no room ends up with no
        member, and a drill that cuts its host would prove nothing.
        """
        ring = Ring.from_dict(self.ring())
        token = ""
        for _ in range(1000):
            token = secrets.token_hex(3)
            owners = {ring.owner_id(f"{base}{token}:{i}") for i in range(rooms)}
            if len(owners) >= min(rooms, len(ring)):
                break
        return f"{base}{token}:"

    def describe(self) -> dict:
        return {**self.netns.describe(), "redis": self.redis_url,
                "controls": [{"url": c.url, "replica": f"control-{self.netns.host(c.host).name}"} for c in self.controls],
                "nodes": [{"host": n.host, "bind": n.bind_host or n.host, "workers": n.workers, "ports": n.ports}
                          for n in self.nodes]}

    # --- lifetime ------------------------------------------------------------------------------

    def logs(self) -> dict[str, str]:
        return {**super().logs(), **{c.log_path: c.log() for c in self.controls if c.log_path}}

    def stop(self) -> None:
        """Heal every cut link, stop nodes, control replicas, then Redis, by PID; then remove the fleet."""
        try:
            for host in self.netns.hosts:
                if self.netns.is_cut(host):
                    self.netns.heal(host)  # a graceful stop needs its peers (a worker steering clients away)
            self.resume_redis()
            for service in [*self.nodes, *self.controls, *([self.redis] if self.redis else [])]:
                try:
                    service.stop()
                except Exception:  # noqa: BLE001 - keep stopping the rest; close() kills what is left
                    pass
        finally:
            self.netns.close()
