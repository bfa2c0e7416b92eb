"""The netns fleet (chaos/netns.py, chaos/drill/fleet.py) and the drills that run on it.

Real hosts in tests: three network namespaces on a private bridge, Redis on
host1, control replicas on host2 and host3, a node bound to 0.0.0.0 on each,
clients in the root namespace. CI runs as root, so a fleet that cannot be
built is a FAILURE with the reason, never a skip.

The drills run as an operator runs them (`python -m chaos.drill ... --fleet
netns --short`), each building and removing its own fleet; the assertions
read their JSON reports, and check that the drill left no namespace or
interface of its own behind.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from chaos.cluster import REPO, listening_ports_in_own_netns
from chaos.eventually import eventually_blocking
from chaos.netns import ALLOWED_RANGE, FleetUnavailable, NetnsFleet, check_can_build, leftovers
from tests.chaos.drill_process import drill_process, interrupt

DRILL_TIMEOUT_S = 150  # the short fleet drills take 20-40 s; they bound themselves well below this


def _fleet_or_fail():
    from chaos.drill.fleet import FleetCluster
    try:
        return FleetCluster.start(workers_per_node=1)
    except FleetUnavailable as exc:
        pytest.fail(f"cannot build the netns test fleet (CI runs as root and must be able to): {exc}")


@pytest.fixture(scope="module")
def fleet():
    cluster = _fleet_or_fail()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert leftovers(cluster.netns.tag) == []


def _ip_json(*args: str) -> list[dict]:
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout or "[]")


def test_the_fleet_is_three_hosts_on_198_18_with_nodes_on_the_wildcard_and_every_host_in_the_ring(fleet):
    netns = fleet.netns
    assert netns.network.subnet_of(ALLOWED_RANGE) and netns.network.prefixlen == 24  # 198.18.0.0/24 if alone
    names = {entry["name"] for entry in _ip_json("netns", "list")}
    assert {h.netns for h in netns.hosts} <= names and len(netns.hosts) == 3

    for host in netns.hosts:
        addresses = [a for link in _ip_json("-n", host.netns, "-4", "addr", "show") for a in link["addr_info"]]
        mine = {a["local"] for a in addresses if a["local"] != "127.0.0.1"}
        assert mine == {host.address} and ipaddress.ip_address(host.address) in netns.network, (host, mine)
        routes = _ip_json("-n", host.netns, "route", "show")
        assert all(r["dst"] != "default" for r in routes), routes  # nothing can leave the bridge

        node = fleet.node_on(host)
        listening = subprocess.run([*netns.prefix(host), "ss", "-Hltn"], capture_output=True, text=True,
                                   check=True).stdout
        assert re.search(rf"\s0\.0\.0\.0:{node.port}\s", listening), listening  # workers bind the wildcard
        assert node.port in listening_ports_in_own_netns(fleet.worker_pid(fleet.urls.index(node.ws_url(0))))

    redis_listen = subprocess.run([*netns.prefix(netns.hosts[0]), "ss", "-Hltn"], capture_output=True, text=True,
                                  check=True).stdout
    assert f" {netns.hosts[0].address}:6379 " in redis_listen and "0.0.0.0:6379" not in redis_listen

    ring = fleet.ring()
    members = ring["members"]
    assert {m["id"].rsplit(":", 1)[0] for m in members} == {h.address for h in netns.hosts}
    for member in members:
        host = member["id"].rsplit(":", 1)[0]
        assert ipaddress.ip_address(host) in ALLOWED_RANGE
        assert member["url"] == f"ws://{member['id']}/ws" and member["address"] == member["id"]
    assert fleet.leader_id() == "control-host3"  # B was started first and leads: the partition drill cuts it


def test_a_fleet_removes_every_namespace_veth_and_bridge_it_made_and_what_ran_in_it():
    check_can_build("rcT")  # raises FleetUnavailable with the reason where namespaces cannot be made
    tag = "rcT" + str(abs(hash(Path.cwd())) % 10000)
    with NetnsFleet(3, tag=tag) as netns:
        made = set(leftovers(tag))
        assert {h.netns for h in netns.hosts} | {netns.bridge} | {h.veth_bridge for h in netns.hosts} <= made
        sleeper = netns.popen(netns.hosts[1], ["sleep", "60"])
        # `ip netns exec` enters the namespace and then execs, so the PID is the
        # program's; Popen returns before the setns(), so wait for it (bounded).
        eventually_blocking(lambda: netns.pids_in(netns.hosts[1]), equals=[sleeper.pid],
                            what="the sleeper is the one process in host2's namespace", timeout_s=10)
    assert sleeper.poll() is not None
    assert leftovers(tag) == []
    assert not [link for link in _ip_json("link", "show") if link["ifname"].startswith(tag)]


def _run_drill(scenario: str, out: Path) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaos.drill", scenario, "--fleet", "netns", "--short", "--quiet", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=DRILL_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the drill removes its fleet on SIGTERM
            proc.communicate(timeout=60)
    assert leftovers(f"rc{proc.pid}") == [], "the drill left namespaces or interfaces behind"
    reports = sorted(out.glob(f"drill-{scenario}-*.json"))
    assert reports, f"no JSON report; stdout:\n{stdout}\nstderr:\n{stderr[-3000:]}"
    report = json.loads(reports[-1].read_text())
    assert proc.returncode == 0 and report["verdict"] == "PASS", f"{report['failures']}\n{stdout}\n{stderr[-3000:]}"
    results = report["results"]
    assert results["acked"] > 0 and results["lost"] == 0 and results["duplicates"] == 0
    assert results["out_of_order"] == 0 and results["recovery_s"] is not None
    assert report["cluster"]["hosts"] and report["client_liveness_s"]
    return report


def test_kill_node_drill_passes_on_the_fleet(tmp_path):
    report = _run_drill("kill-node", tmp_path)
    host3 = report["cluster"]["hosts"][2]["address"]
    assert report["details"]["killed_workers"] == [f"{host3}:8700"]
    assert report["results"]["disconnects"] >= 1 and report["results"]["resumes"].get("recovered", 0) >= 1
    assert report["details"]["ring_without_node_s"] is not None  # the control plane saw the host go


def test_partition_drill_passes_and_the_cut_host_left_the_ring_and_came_back(tmp_path):
    report = _run_drill("partition", tmp_path)
    cut, cycle = report["details"]["cut_host"], report["details"]["partition"]
    assert cut["host"] == "host3" and cut["members_on_it"] >= 1 and cut["leader_before"] == "control-host3"
    assert cycle["ring_without_host_s"] is not None  # left the ring while cut ...
    assert cycle["ring_without_host_s"] < cycle["healed_at_s"] < cycle["rejoined_s"]  # ... came back after the heal
    assert set(cut["workers"]) <= set(cycle["ring_after"])
    assert cycle["cut_leader_stepped_down_s"] is not None and cycle["leader_during_cut"] == "control-host2"
    assert cycle["cut_replica_says_it_leads_during_cut"] is False
    saw = cycle["cut_host_clients_saw"]
    assert saw["members"] == cut["members_on_it"] and saw["how_they_noticed"].get("liveness_timeout", 0) >= 1
    assert "host3" not in saw["first_join_after_cut_on"]
    assert cycle["members_on_owner_s"] is not None and cycle["members_off_owner"] == []


def test_a_fleet_drill_interrupted_while_a_host_is_cut_off_removes_its_fleet_and_stops_every_process(tmp_path):
    with drill_process(["chaos.drill", "partition", "--fleet", "netns", "--short", "--out", str(tmp_path)]) as proc:
        tag = f"rc{proc.pid}"
        drill = psutil.Process(proc.pid)

        def cut_off() -> bool:
            link = subprocess.run(["ip", "-j", "link", "show", f"{tag}v3"], capture_output=True, text=True)
            return link.returncode == 0 and "DOWN" in json.loads(link.stdout)[0]["operstate"]

        # The fleet first: while the drill builds it, host3's link exists and is DOWN before it is set up.
        eventually_blocking(lambda: len(drill.children(recursive=True)) >= 6, timeout_s=90, interval_s=0.1,
                            what="the drill's redis, 2 control replicas, 3 nodes and workers to run")
        eventually_blocking(cut_off, what="the drill to cut host3 off", timeout_s=90, interval_s=0.1)
        started = drill.children(recursive=True)
        interrupt(proc, started, timeout_s=90)
    assert leftovers(tag) == []
