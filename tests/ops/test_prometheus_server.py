"""A real Prometheus scraping a real local cluster with deploy/prometheus's rules loaded.

One scrape config discovers every target (every worker port, the router, the
control replica) from the control replica's GET /v1/sd/prometheus, as
docs/monitoring.md recommends; discovery, scrapes and rule evaluation every
second. The cluster comes up with every target up, every
worker's series present, every rule evaluating without error and no alert
active; then a worker is killed (its supervisor restarts it: the restart alert
fires) and the node is stopped (the worker-down alert goes pending: its real
`for:` of 1m keeps it from firing within the test, promtool covers the rest).
"""

from __future__ import annotations

import os
import signal

import pytest

from chaos.eventually import eventually
from tests.ops.helpers import RULES, PrometheusServer, control_sd_job, rule_expressions

WAIT_S = 60.0  # generous: the machine is shared; every wait returns as soon as its condition holds


@pytest.fixture
def prometheus(tmp_path):
    started: list[PrometheusServer] = []

    def start(scrape_configs: list[dict]) -> PrometheusServer:
        server = PrometheusServer(tmp_path, scrape_configs, [RULES])
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def active(server: PrometheusServer, alertname: str) -> dict[str, str]:
    """{instance: state} of the pending or firing alerts named `alertname`."""
    return {a["labels"].get("instance", ""): a["state"] for a in server.alerts() if a["labels"]["alertname"] == alertname}


def rule_health(server: PrometheusServer) -> dict[str, str]:
    """{rule: "ok"} once every rule has been evaluated without error (else its health and error)."""
    rules = [rule for group in server.api("/api/v1/rules")["groups"] for rule in group["rules"]]
    return {rule["name"]: rule["health"] + (f": {rule['lastError']}" if rule.get("lastError") else "") for rule in rules}


@pytest.mark.slow
async def test_prometheus_scrapes_the_cluster_and_the_rules_fire(redis_server, start_node, start_control,
                                                                start_router, prometheus):
    node = start_node(2)
    control = start_control()
    router = start_router("--redis", redis_server.url)
    workers = [f"127.0.0.1:{port}" for port in node.ports]
    server = prometheus(control_sd_job(control.url))
    targets = {*workers, f"127.0.0.1:{router.port}", f"127.0.0.1:{control.port}"}

    await eventually(lambda: server.query("up"), equals={target: 1.0 for target in targets},
                     what="every target scraped and up", timeout_s=WAIT_S)
    # The discovered `job` labels are the jobs the rules select on; `worker` names each worker.
    await eventually(lambda: server.query('count by (instance) (up{job="ringcast-node"})'),
                     equals={w: 1.0 for w in workers}, what="every worker in job ringcast-node", timeout_s=WAIT_S)
    worker_labels = lambda: {sample["metric"]["instance"]: sample["metric"].get("worker")  # noqa: E731
                             for sample in server.api("/api/v1/query", query='up{job="ringcast-node"}')["result"]}
    assert worker_labels() == {w: w for w in workers}
    assert server.query('up{job="ringcast-control"}') == {f"127.0.0.1:{control.port}": 1.0}
    assert server.query('up{job="ringcast-router"}') == {f"127.0.0.1:{router.port}": 1.0}
    await eventually(lambda: set(server.query('ringcast_connections{job="ringcast-node"}')), equals=set(workers),
                     what="ringcast_connections of every worker", timeout_s=WAIT_S)
    await eventually(lambda: set(server.query('ringcast_router_ring_epoch')), equals={f"127.0.0.1:{router.port}"},
                     what="the router's series", timeout_s=WAIT_S)
    await eventually(lambda: rule_health(server), equals={name: "ok" for name in rule_expressions()},
                     what="every rule loaded and evaluated without error", timeout_s=WAIT_S)
    # A healthy cluster raises nothing (the no-leader alert may be pending until the replica is first scraped).
    await eventually(server.alerts, equals=[], what="no active alert on a healthy cluster", timeout_s=WAIT_S)

    os.kill(node.worker_pid(0), signal.SIGKILL)  # the supervisor restarts it
    await eventually(lambda: active(server, "RingcastWorkerRestarted"), equals={workers[0]: "firing"},
                     what="RingcastWorkerRestarted firing for the killed worker", timeout_s=WAIT_S)

    node.stop()
    await eventually(lambda: active(server, "RingcastWorkerDown"), equals={w: "pending" for w in workers},
                     what="RingcastWorkerDown pending for both workers of the stopped node", timeout_s=WAIT_S)
