"""The operator API's contract: auth, errors, reads, event paging; and `ringcast ctl` exit codes and tables."""

import json
import re
import subprocess
import sys

import pytest

from chaos.cluster import REPO
from chaos.eventually import eventually
from common.keys import Keys
from tests.conftest import ADMIN_TOKEN
from tests.control.helpers import events_of, node_view, ring_of, wait_event, wait_ring
from tests.wsclient import WsClient

MUTATIONS = [("POST", "/v1/nodes/{id}/drain"), ("POST", "/v1/nodes/{id}/undrain"), ("POST", "/v1/rebalance"),
             ("DELETE", "/v1/nodes/{id}")]


def ctl(control, *args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ringcast_cli", "ctl", "--url", control.url, *(["--token", token] if token else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)


@pytest.fixture
async def cluster(start_node, start_control):
    # Workers first: the control plane then admits them in one epoch, with no join-time rebalance.
    node = start_node(2, "--restart-backoff-base-s", "60")
    control = start_control()
    await wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    return control, node


async def test_mutations_without_the_admin_token_are_refused_and_change_nothing(cluster):
    control, node = cluster
    worker = f"127.0.0.1:{node.port}"
    epoch = ring_of(control).epoch
    for token in (None, "wrong-token", "", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]):  # None: no header at all
        for method, path in MUTATIONS:
            status, body = control.call(method, path.format(id=worker), token=token)
            assert status == 401 and body["error"] == "UNAUTHORIZED", (token, method, path, body)
    assert ring_of(control).epoch == epoch and worker in ring_of(control)
    assert node_view(control, worker)["desired"] == "active"


async def test_unknown_node_is_404_and_a_live_node_cannot_be_removed(cluster):
    control, node = cluster
    for method, path in MUTATIONS:
        if "{id}" in path:
            status, body = control.call(method, path.format(id="10.9.9.9:1"))
            assert status == 404 and body["error"] == "NODE_NOT_FOUND"
    status, body = control.call("DELETE", f"/v1/nodes/127.0.0.1:{node.port}")
    assert status == 409 and body["error"] == "NODE_ALIVE"


async def test_unknown_routes_are_404_not_found(cluster):
    control, node = cluster
    for method, path in [("GET", "/v1/nope"), ("GET", "/v2/ring"), ("GET", "/"), ("POST", "/v1/nodes/x/explode"),
                         ("DELETE", "/v1/ring/x")]:
        for token in (ADMIN_TOKEN, None):
            status, body = control.call(method, path, token=token)
            assert status == 404 and body["error"] == "NOT_FOUND" and body["message"], (method, path, token, body)


BAD_BODIES = [b"{not json", b"[1, 2]", b'"soon"', b"null", {"windowS": "soon"}, {"windowS": -1}, {"windowS": True},
              {"windowS": None}, {"timeoutS": -0.5}, {"timeoutS": "30"}, {"windowS": 1, "timeoutS": [30]}]


async def test_bad_bodies_and_event_queries_are_400_bad_request_and_change_nothing(cluster):
    control, node = cluster
    worker = f"127.0.0.1:{node.port}"
    epoch = ring_of(control).epoch
    for body in BAD_BODIES:
        status, answer = control.call("POST", f"/v1/nodes/{worker}/drain", body)
        assert status == 400 and answer["error"] == "BAD_REQUEST" and answer["message"], (body, answer)
    for query in ("?limit=ten", "?since=", "?since=1.5", "?limit=1e3"):
        status, answer = control.get("/v1/events" + query)
        assert status == 400 and answer["error"] == "BAD_REQUEST", (query, answer)
    assert ring_of(control).epoch == epoch and worker in ring_of(control)
    assert node_view(control, worker)["desired"] == "active"
    assert not [e for e in events_of(control) if e["kind"] == "drain"]


async def test_a_dead_node_can_be_removed(cluster):
    import os
    import signal

    control, node = cluster
    victim = f"127.0.0.1:{node.port + 1}"
    os.kill(node.worker_pid(1), signal.SIGKILL)
    await eventually(lambda: node_view(control, victim).get("health"), equals="dead", timeout_s=20,
                     what="the worker to be declared dead")
    status, body = control.call("DELETE", f"/v1/nodes/{victim}")
    assert status == 200 and body["removed"] is True
    assert node_view(control, victim) == {}
    assert any(e["kind"] == "removed" and e["node"] == victim for e in events_of(control))  # logged before the 200


async def test_room_view_shows_owner_hosts_and_member_counts(cluster):
    control, node = cluster
    ring = ring_of(control)
    clients = [await WsClient.connect(node.ws_url(i % 2)) for i in range(3)]  # 2 members on worker 0, 1 on worker 1
    try:
        for client in clients:
            await client.join("lobby")
        def reported() -> dict | None:
            status, view = control.get("/v1/rooms/lobby")
            assert status == 200, view
            return view if view["members"] == 3 else None
        view = await eventually(reported, what="heartbeats to report the room")
        assert view["owner"]["id"] == ring.owner_id("lobby") and view["ringEpoch"] == ring.epoch
        assert view["hosts"] == [{"node": f"127.0.0.1:{node.port}", "members": 2},
                                 {"node": f"127.0.0.1:{node.port + 1}", "members": 1}]
    finally:
        for client in clients:
            await client.close()


async def test_healthz_and_metrics(cluster):
    control, _ = cluster
    status, health = control.get("/healthz")
    assert status == 200 and health["leader"] is True and health["redisConnected"] is True
    assert health["leaderReplica"] == {"id": health["replica"], "url": control.url}
    # The gauges are set at the end of the tick that published the ring: wait for them too.
    await eventually(lambda: control.metric("ringcast_control_ring_epoch"), equals=float(ring_of(control).epoch),
                     what="the ring epoch gauge")
    assert control.metric("ringcast_control_ring_members") == 2.0
    assert control.metric("ringcast_control_leader") == 1.0
    assert control.metric("ringcast_control_ticks_total") >= 1.0


async def test_ctl_tables_and_exit_codes(cluster):
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
    await wait_ring(control, lambda r: worker in r, "the worker back in the ring")
    unreachable = subprocess.run([sys.executable, "-m", "ringcast_cli", "ctl", "--url", "http://127.0.0.1:1", "nodes"],
                                 capture_output=True, text=True, timeout=30, cwd=REPO)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


async def test_a_replica_without_an_admin_token_refuses_every_mutation(start_control):
    control = start_control(admin_token="")
    await eventually(control.is_leader, what="the replica to lead", timeout_s=15)  # refused for no other reason
    for token in (None, "", ADMIN_TOKEN, "anything"):
        for method, path in MUTATIONS:
            status, body = control.call(method, path.format(id="10.9.9.9:1"), token=token)
            assert status == 401 and body["error"] == "UNAUTHORIZED", (token, method, path, body)
    assert control.get("/v1/ring")[0] == 200 and control.get("/v1/events")[0] == 200  # reads need no token
    assert not [e for e in events_of(control) if e["kind"] == "rebalance"]


def set_commands(redis_server) -> int:
    """How many SET commands this Redis has executed (INFO commandstats)."""
    found = re.search(r"cmdstat_set:calls=(\d+)", redis_server.command("INFO", "commandstats").decode())
    return int(found.group(1)) if found else 0


async def test_a_mutation_while_no_replica_holds_the_lease_is_503_no_leader(redis_server, start_control):
    lease_key = Keys().leader
    gone = {"id": "gone", "url": "http://127.0.0.1:9"}
    # A leader that has just been killed: its lease is still in Redis.
    redis_server.command("SET", lease_key, json.dumps({**gone, "nonce": "0"}))
    sets = set_commands(redis_server)
    # A follower that tries to take the lease only every 300 s. No worker runs, so the only SETs are its tries.
    follower = start_control("--lease-s", "600", "--lease-renew-interval-s", "300")
    await eventually(lambda: set_commands(redis_server) > sets, what="the follower's first try to take the lease")
    status, body = follower.call("POST", "/v1/rebalance")
    assert status == 409 and body["error"] == "NOT_LEADER" and body["leader"] == gone, body

    redis_server.command("DEL", lease_key)  # the dead leader's lease ran out; the follower has not tried again yet
    for method, path in MUTATIONS:
        status, body = follower.call(method, path.format(id="10.9.9.9:1"))
        assert status == 503 and body["error"] == "NO_LEADER" and body["leader"] is None, (method, path, body)
    status, body = follower.call("POST", "/v1/rebalance", token=None)
    assert status == 401 and body["error"] == "UNAUTHORIZED"  # authentication before leadership
    status, health = follower.get("/healthz")
    assert health["leader"] is False and health["leaderReplica"] is None
    assert not [e for e in events_of(follower) if e["kind"] in ("rebalance", "leader")]


async def test_events_are_newest_first_bounded_by_limit_and_since(redis_server, start_control):
    control = start_control("--max-events", "6", "--max-events-page", "4")
    await wait_event(control, lambda e: e["kind"] == "leader", "the leader event")  # seq 1
    for generation in range(1, 8):  # no workers: each rebalance logs exactly one event, seq 2..8
        status, answer = control.call("POST", "/v1/rebalance")
        assert status == 202 and answer["generation"] == generation, answer

    def seqs(query: str = "") -> list[int]:
        return [e["seq"] for e in events_of(control, query)]
    assert int(redis_server.command("LLEN", Keys().events)) == 6  # max_events: the oldest were dropped
    assert seqs() == [8, 7, 6, 5]  # newest first, one page of max_events_page
    assert seqs("?limit=2") == [8, 7]
    assert seqs("?limit=100") == [8, 7, 6, 5] and seqs("?limit=0") == [8]  # limit is clamped to 1..page
    assert seqs("?since=6") == [8, 7] and seqs("?since=6&limit=1") == [8] and seqs("?since=8") == []
    assert seqs("?since=2&limit=3") == [8, 7, 6]  # more than a page after `since`: still the newest
    assert [e["detail"]["generation"] for e in events_of(control, "?limit=2")] == [7, 6]
