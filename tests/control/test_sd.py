"""GET /v1/sd/prometheus: Prometheus HTTP service discovery of a whole fleet, from real processes.

Every worker with a membership record (dead ones too, until removed), every running control
replica and every router started with --redis is one target group; a router with --nodes only
does not register anywhere and is not listed; a router that stops cleanly leaves at once.
"""

from __future__ import annotations

import os
import signal

from chaos.eventually import eventually
from tests.control.helpers import node_view


def discovered(control) -> dict[str, dict[str, str]]:
    """{target: labels} of the replica's service discovery answer (one target per group)."""
    status, groups = control.get("/v1/sd/prometheus")
    assert status == 200, groups
    assert isinstance(groups, list)
    found = {}
    for group in groups:
        assert len(group["targets"]) == 1 and all(isinstance(v, str) for v in group["labels"].values()), group
        found[group["targets"][0]] = group["labels"]
    return found


def worker_labels(worker: str, health: str, state: str, in_ring: str) -> dict[str, str]:
    return {"job": "ringcast-node", "node": "127.0.0.1", "worker": worker, "__meta_ringcast_state": state,
            "__meta_ringcast_health": health, "__meta_ringcast_desired": "active", "__meta_ringcast_in_ring": in_ring}


async def test_every_worker_router_and_replica_is_discovered_and_a_dead_worker_stays_until_removed(
    redis_server, start_node, start_control, start_router
):
    node = start_node(2, "--restart-backoff-base-s", "60")  # the killed worker stays dead
    control = start_control()
    router = start_router("--redis", redis_server.url)
    static_router = start_router("--nodes", f"127.0.0.1:{node.port}")  # no Redis: nowhere to register
    workers = [f"127.0.0.1:{port}" for port in node.ports]
    replica = f"127.0.0.1:{control.port}"
    healthy = {
        **{w: worker_labels(w, "alive", "active", "true") for w in workers},
        replica: {"job": "ringcast-control", "replica": replica, "__meta_ringcast_leader": "true"},
        f"127.0.0.1:{router.port}": {"job": "ringcast-router", "router": f"127.0.0.1:{router.port}"},
    }
    await eventually(lambda: discovered(control), equals=healthy, timeout_s=45,
                     what="every worker, the router and the replica discovered (not the --nodes router)")
    assert f"127.0.0.1:{static_router.port}" not in discovered(control)

    victim = workers[1]
    os.kill(node.worker_pid(1), signal.SIGKILL)
    await eventually(lambda: discovered(control).get(victim, {}).get("__meta_ringcast_health"), equals="dead",
                     timeout_s=30, what="the killed worker still listed, with health dead")
    after_death = discovered(control)
    assert after_death[victim]["job"] == "ringcast-node" and after_death[victim]["worker"] == victim
    assert after_death[victim]["__meta_ringcast_in_ring"] == "false"

    status, body = control.call("DELETE", f"/v1/nodes/{victim}")
    assert status == 200 and body["removed"] is True, body
    assert victim not in discovered(control)  # removal is written before the 200
    assert node_view(control, victim) == {}

    router.stop()  # a clean stop withdraws its entry (it would otherwise expire after presence_ttl_s)
    await eventually(lambda: f"127.0.0.1:{router.port}" in discovered(control), equals=False, timeout_s=15,
                     what="the stopped router gone from discovery")


async def test_every_control_replica_is_discovered_and_only_one_is_the_leader(redis_server, start_control):
    first, second = start_control(), start_control()
    replicas = {f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"}

    def controls(control) -> dict[str, str]:
        return {target: labels["__meta_ringcast_leader"] for target, labels in discovered(control).items()
                if labels["job"] == "ringcast-control"}

    listed = await eventually(lambda: controls(second) if set(controls(second)) == replicas else None,
                              timeout_s=30, what="both replicas discovered by the follower too")
    assert sorted(listed.values()) == ["false", "true"]
    assert controls(first) == listed  # every replica answers the same from Redis
