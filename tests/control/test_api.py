"""The operator API's contract: auth, errors, reads; and `ringcast ctl` exit codes and tables."""

import subprocess
import sys

import pytest

from chaos.cluster import REPO, wait_until
from tests.conftest import ADMIN_TOKEN
from tests.control.helpers import node_view, ring_of, wait_ring
from tests.wsclient import WsClient

MUTATIONS = [("POST", "/v1/nodes/{id}/drain"), ("POST", "/v1/nodes/{id}/undrain"), ("POST", "/v1/rebalance"),
             ("DELETE", "/v1/nodes/{id}")]


def ctl(control, *args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ringcast_cli", "ctl", "--url", control.url, *(["--token", token] if token else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)


@pytest.fixture
def cluster(start_node, start_control):
    # Workers first: the control plane then admits them in one epoch, with no join-time rebalance.
    node = start_node(2, "--restart-backoff-base-s", "60")
    control = start_control()
    wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    return control, node


def test_mutations_without_the_admin_token_are_refused_and_change_nothing(cluster):
    control, node = cluster
    worker = f"127.0.0.1:{node.port}"
    epoch = ring_of(control).epoch
    for token in (None, "wrong-token", "", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]):  # None: no header at all
        for method, path in MUTATIONS:
            status, body = control.call(method, path.format(id=worker), token=token)
            assert status == 401 and body["error"] == "UNAUTHORIZED", (token, method, path, body)
    assert ring_of(control).epoch == epoch and worker in ring_of(control)
    assert node_view(control, worker)["desired"] == "active"


def test_unknown_node_is_404_and_a_live_node_cannot_be_removed(cluster):
    control, node = cluster
    for method, path in MUTATIONS:
        if "{id}" in path:
            status, body = control.call(method, path.format(id="10.9.9.9:1"))
            assert status == 404 and body["error"] == "NODE_NOT_FOUND"
    status, body = control.call("DELETE", f"/v1/nodes/127.0.0.1:{node.port}")
    assert status == 409 and body["error"] == "NODE_ALIVE"
    status, body = control.call("POST", f"/v1/nodes/127.0.0.1:{node.port}/drain", {"windowS": "soon"})
    assert status == 400 and body["error"] == "BAD_REQUEST"


def test_a_dead_node_can_be_removed(cluster):
    import os
    import signal

    control, node = cluster
    victim = f"127.0.0.1:{node.port + 1}"
    os.kill(node.worker_pid(1), signal.SIGKILL)
    wait_until(lambda: node_view(control, victim).get("health") == "dead", 20, "the worker to be declared dead")
    status, body = control.call("DELETE", f"/v1/nodes/{victim}")
    assert status == 200 and body["removed"] is True
    assert node_view(control, victim) == {}
    assert any(e["kind"] == "removed" for e in control.get("/v1/events")[1]["events"])


async def test_room_view_shows_owner_hosts_and_member_counts(cluster):
    control, node = cluster
    ring = ring_of(control)
    clients = [await WsClient.connect(node.ws_url(i % 2)) for i in range(3)]  # 2 members on worker 0, 1 on worker 1
    try:
        for client in clients:
            await client.join("lobby")
        wait_until(lambda: control.get("/v1/rooms/lobby")[1]["members"] == 3, 10, "heartbeats to report the room")
        status, view = control.get("/v1/rooms/lobby")
        assert status == 200 and view["owner"]["id"] == ring.owner_id("lobby") and view["ringEpoch"] == ring.epoch
        assert view["hosts"] == [{"node": f"127.0.0.1:{node.port}", "members": 2},
                                 {"node": f"127.0.0.1:{node.port + 1}", "members": 1}]
    finally:
        for client in clients:
            await client.close()


def test_healthz_and_metrics(cluster):
    control, _ = cluster
    status, health = control.get("/healthz")
    assert status == 200 and health["leader"] is True and health["redisConnected"] is True
    with __import__("urllib.request").request.urlopen(control.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f"ringcast_control_ring_epoch {float(ring_of(control).epoch)}" in text
    assert "ringcast_control_leader 1.0" in text


def test_ctl_tables_and_exit_codes(cluster):
    control, node = cluster
    worker = f"127.0.0.1:{node.port}"
    done = ctl(control, "nodes")
    assert done.returncode == 0 and "NODE" in done.stdout and worker in done.stdout and "active" in done.stdout
    done = ctl(control, "ring")
    assert done.returncode == 0 and f"ring epoch {ring_of(control).epoch}" in done.stdout
    assert ctl(control, "room", "lobby").returncode == 0
    assert ctl(control, "events").returncode == 0 and "joined" in ctl(control, "events").stdout
    assert ctl(control, "drain", "10.9.9.9:1").returncode == 1
    refused = ctl(control, "rebalance", token="wrong")
    assert refused.returncode == 1 and "UNAUTHORIZED" in refused.stderr
    assert ctl(control, "no-such-command").returncode == 2
    assert ctl(control, "drain").returncode == 2  # missing the node id
    drained = ctl(control, "drain", worker, "--window-s", "0", "--wait")
    assert drained.returncode == 0 and "drained" in drained.stdout
    assert ctl(control, "undrain", worker).returncode == 0
    wait_ring(control, lambda r: worker in r, "the worker back in the ring")
    unreachable = subprocess.run([sys.executable, "-m", "ringcast_cli", "ctl", "--url", "http://127.0.0.1:1", "nodes"],
                                 capture_output=True, text=True, timeout=30, cwd=REPO)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
