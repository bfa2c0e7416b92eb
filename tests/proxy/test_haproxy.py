"""Behind a real proxy: clients over wss:// through HAProxy, configured by `ringcast ctl proxy-config haproxy`.

Every test runs real processes: redis-server, a control plane, a `ringcast node` whose workers give
clients public URLs on the proxy (`--public-url wss://127.0.0.1:P/w/{node_id}-{index}`), and Debian's
haproxy with the configuration the command wrote from the live ring and a certificate made at test
time; the first also a route service (`ringcast router`) that the proxy sends `/route` to. Clients use loopback source addresses (127.0.0.2, 127.0.0.3) so per-IP limits can tell them
apart although every worker sees only HAProxy (127.0.0.1) as its TCP peer. The proxy follows the ring
the documented way: regenerate the file, reload HAProxy when the command says it changed.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.cluster import REPO, ControlProcess, NodeProcess, free_port, http_json, metric_value
from chaos.eventually import eventually
from router.ring import Ring
from tests.control.helpers import wait_ring
from tests.proxy.clients import connect, session_from, tls_context, upgrade_refusal
from tests.proxy.haproxy import HaproxyProcess
from tests.wsclient import WsClient

NODE_ID = "edge-a"


def public_url_template(proxy_port: int) -> str:
    return f"wss://127.0.0.1:{proxy_port}/w/{{node_id}}-{{index}}"


def ctl_proxy_config(control, proxy_cert, proxy_port: int, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringcast_cli", "ctl", "--url", control.url, "proxy-config", "haproxy",
         "--cert", str(proxy_cert.pem_with_key), "--bind", f"127.0.0.1:{proxy_port}", "--output", str(output),
         *extra],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )


@dataclass
class Fleet:
    control: ControlProcess
    node: NodeProcess
    ring: Ring  # the ring the proxy configuration was written from
    proxy_port: int
    proxy: HaproxyProcess
    cfg: Path
    ctl_args: tuple[str, ...]

    def regenerate(self, proxy_cert) -> int:
        """`ringcast ctl proxy-config haproxy --output cfg` from the live ring; its exit code."""
        result = ctl_proxy_config(self.control, proxy_cert, self.proxy_port, self.cfg, *self.ctl_args)
        assert result.returncode in (0, 3), result.stdout + result.stderr
        return result.returncode


async def fleet_behind_haproxy(start_control, start_node, start_haproxy, proxy_cert, tmp_path, workers: int,
                               *node_args: str, ctl_args: tuple[str, ...] = ()) -> Fleet:
    """A control plane, one node of `workers` workers named for the proxy, and HAProxy configured from the
    published ring (`ctl_args`: more options of `ctl proxy-config haproxy`)."""
    control = start_control()
    proxy_port = free_port()
    node = start_node(workers, "--node-id", NODE_ID, "--public-url", public_url_template(proxy_port), *node_args)
    ring = await wait_ring(
        control,
        lambda r: len(r) == workers and all(m.url.startswith(f"wss://127.0.0.1:{proxy_port}/w/") for m in
                                            r.members.values()),
        what=f"the ring to list {workers} workers with public URLs on the proxy",
    )
    cfg = tmp_path / "haproxy.cfg"
    result = ctl_proxy_config(control, proxy_cert, proxy_port, cfg, *ctl_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ctl_proxy_config(control, proxy_cert, proxy_port, cfg, *ctl_args).returncode == 3  # unchanged: no reload
    checked = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proxy = start_haproxy(cfg, proxy_port)
    # Each worker reads the ring on its own poll, and one still on an older ring would hint `moved`.
    await eventually(lambda: all(http_json(node.http_url(i, "/ring"))[1].get("epoch") == ring.epoch
                                 for i in range(workers)), what="every worker to read the ring")
    return Fleet(control, node, ring, proxy_port, proxy, cfg, ctl_args)


async def route_via_proxy(proxy_port: int, proxy_cert, room: str) -> dict:
    async with session_from() as session:
        async with session.get(f"https://127.0.0.1:{proxy_port}/route", params={"room": room},
                               ssl=tls_context(proxy_cert)) as response:
            assert response.status == 200, await response.text()
            return await response.json()


def rooms_per_owner(ring: Ring) -> dict[str, str]:
    """One room owned by each member: member id -> room."""
    found: dict[str, str] = {}
    for i in range(10_000):
        room = f"proxy-room-{i}"
        found.setdefault(ring.owner_id(room), room)
        if len(found) == len(ring):
            return found
    raise AssertionError("no room for some member")


def router_routes(router) -> float:
    """GET /route requests the router answered (ringcast_router_lookups_total)."""
    with urllib.request.urlopen(router.url("/metrics"), timeout=2) as response:
        return metric_value(response.read().decode(), "ringcast_router_lookups_total")


def worker_index(node, member_id: str) -> int:
    return node.ports.index(int(member_id.rsplit(":", 1)[1]))


def connections_of(node, index: int) -> int:
    status, body = http_json(node.http_url(index, "/readyz"))
    assert status == 200, body
    return body["connections"]


async def test_clients_reach_their_rooms_owner_over_wss_through_haproxy(
        start_control, start_node, start_router, redis_server, start_haproxy, proxy_cert, tmp_path):
    router = start_router("--redis", redis_server.url)
    fleet = await fleet_behind_haproxy(
        start_control, start_node, start_haproxy, proxy_cert, tmp_path, 2, "--trusted-proxies", "127.0.0.0/8",
        ctl_args=("--route-backend", f"127.0.0.1:{router.port}"))
    node, ring, proxy_port = fleet.node, fleet.ring, fleet.proxy_port
    assert f"server router0 127.0.0.1:{router.port} check" in fleet.cfg.read_text()
    # The route service answers /route through the proxy once it has read the same ring.
    await eventually(lambda: http_json(router.url("/ring"))[1].get("epoch") == ring.epoch,
                     what="the router to read the ring")
    routed_before = router_routes(router)
    rooms = rooms_per_owner(ring)
    clients: list[WsClient] = []
    try:
        for member_id, room in sorted(rooms.items()):
            answer = await route_via_proxy(proxy_port, proxy_cert, room)
            expected = ring.members[member_id].url
            assert answer["url"] == expected and expected.startswith(f"wss://127.0.0.1:{proxy_port}/w/{NODE_ID}-")
            index = worker_index(node, member_id)
            before = connections_of(node, index)
            receiver = await connect(answer["url"], proxy_cert, "127.0.0.2")
            sender = await connect(answer["url"], proxy_cert, "127.0.0.3")
            clients += [receiver, sender]
            # The proxy took both to the owner: its count grew by two, the other worker's did not.
            assert connections_of(node, index) == before + 2
            assert sum(connections_of(node, i) for i in range(2)) == len(clients)
            await receiver.join(room)
            await sender.join(room)
            await sender.send({"type": "message", "room": room, "text": f"hello {room}"})
            got = await receiver.expect("message")
            assert got["room"] == room and got["text"] == f"hello {room}"
            assert not [f for f in receiver.seen + sender.seen if f.get("type") == "moved"]
        assert router_routes(router) >= routed_before + len(rooms)  # the route service answered them
        # A path no worker has gets the proxy's 404, not some worker.
        status, body = await upgrade_refusal(f"wss://127.0.0.1:{proxy_port}/w/nobody", proxy_cert)
        assert (status, body.get("error")) == (404, "UNKNOWN_WORKER")
    finally:
        for client in clients:
            await client.close()


async def test_per_ip_caps_count_the_real_client_behind_haproxy_and_cannot_be_spoofed(
        start_control, start_node, start_haproxy, proxy_cert, tmp_path):
    # Only HAProxy's own address is trusted: clients' 127.0.0.x addresses must not count as proxies, or a
    # client's own X-Forwarded-For entry would be taken for the client (rightmost address not trusted).
    fleet = await fleet_behind_haproxy(
        start_control, start_node, start_haproxy, proxy_cert, tmp_path, 1,
        "--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "2")
    node, ring = fleet.node, fleet.ring
    (member,) = ring.members.values()
    url = member.url
    clients: list[WsClient] = []
    try:
        clients.append(await connect(url, proxy_cert, "127.0.0.2"))
        clients.append(await connect(url, proxy_cert, "127.0.0.2"))
        status, body = await upgrade_refusal(url, proxy_cert, "127.0.0.2")
        assert (status, body.get("error")) == (429, "TOO_MANY_CONNECTIONS_FROM_IP")
        # Another client, same proxy peer: its own count.
        clients.append(await connect(url, proxy_cert, "127.0.0.3"))
        # Claiming another address through the proxy does not help: HAProxy appends the one it saw.
        for spoof in ({"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.7, 127.0.0.1"},
                      {"Forwarded": "for=198.51.100.8"}, {"X-Forwarded-For": '"198.51.100.9'}):
            status, body = await upgrade_refusal(url, proxy_cert, "127.0.0.2", headers=spoof)
            assert (status, body.get("error")) == (429, "TOO_MANY_CONNECTIONS_FROM_IP"), spoof
        # The count follows the real client: one of 127.0.0.2's sockets closes, it may open one again.
        await clients.pop(0).close()
        await eventually(lambda: connections_of(node, 0) == 2, what="the closed socket to leave the count")
        clients.append(await connect(url, proxy_cert, "127.0.0.2"))
        assert connections_of(node, 0) == 3
    finally:
        for client in clients:
            await client.close()


async def test_the_proxy_follows_a_drain_and_a_new_node_after_regenerating_and_reloading(
        start_control, start_node, start_haproxy, proxy_cert, tmp_path):
    fleet = await fleet_behind_haproxy(
        start_control, start_node, start_haproxy, proxy_cert, tmp_path, 2, "--trusted-proxies", "127.0.0.1")
    drained = fleet.ring.members[f"{NODE_ID}:{fleet.node.ports[1]}"]
    kept = fleet.ring.members[f"{NODE_ID}:{fleet.node.ports[0]}"]
    status, answer = fleet.control.call("POST", f"/v1/nodes/{drained.id}/drain", {"windowS": 0.5})
    assert status == 202, answer
    await wait_ring(fleet.control, lambda r: drained.id not in r and len(r) == 1, what="the drained worker to leave")
    assert fleet.regenerate(proxy_cert) == 0  # changed: reload
    assert f"w_{NODE_ID}-1" not in fleet.cfg.read_text() and f"w_{NODE_ID}-0" in fleet.cfg.read_text()
    fleet.proxy.reload()

    async def drained_path_is_gone() -> bool:
        status, body = await upgrade_refusal(drained.url, proxy_cert)
        return (status, body.get("error")) == (404, "UNKNOWN_WORKER")
    await eventually(drained_path_is_gone, what="the reloaded proxy to forget the drained worker's path")
    # During a reload the old HAProxy process may still accept for a moment: ask until the new one answers.
    async def every_room_routes_to_the_kept_worker() -> bool:
        answers = [await route_via_proxy(fleet.proxy_port, proxy_cert, f"follow-{i}") for i in range(5)]
        return all(answer["url"] == kept.url for answer in answers)
    await eventually(every_room_routes_to_the_kept_worker, what="/route through the proxy to name the kept worker")

    # A new node joins the ring: after the next regeneration and reload, its path leads to it.
    newcomer = start_node(1, "--node-id", "edge-b", "--public-url", public_url_template(fleet.proxy_port),
                          "--trusted-proxies", "127.0.0.1")
    ring = await wait_ring(fleet.control, lambda r: f"edge-b:{newcomer.port}" in r, what="the new node to join")
    assert fleet.regenerate(proxy_cert) == 0
    fleet.proxy.reload()
    url = ring.members[f"edge-b:{newcomer.port}"].url
    assert url == f"wss://127.0.0.1:{fleet.proxy_port}/w/edge-b-0"
    room = next(r for r in (f"newcomer-{i}" for i in range(10_000)) if ring.owner_id(r) == f"edge-b:{newcomer.port}")
    client = await eventually(lambda: connect(url, proxy_cert, "127.0.0.2"),
                              what="the reloaded proxy to lead to the new node")
    try:
        await client.join(room)
        assert not [f for f in client.seen if f.get("type") == "moved"]
        assert connections_of(newcomer, 0) == 1
    finally:
        await client.close()


async def test_the_header_counts_only_from_trusted_peers_and_ipv6_clients_per_64(start_node):
    """Straight to the workers, no proxy: without --trusted-proxies the header is ignored; with them, only
    from a trusted peer, and the IPv6 clients it names are counted per /64."""
    untrusting = start_node(1, "--max-connections-per-ip", "2")
    url = untrusting.ws_url(0)
    clients: list[WsClient] = []
    try:
        for i in range(2):
            clients.append(await connect(url, headers={"X-Forwarded-For": f"203.0.113.{i + 1}"}))
        status, body = await upgrade_refusal(url, headers={"X-Forwarded-For": "203.0.113.3"})
        assert (status, body.get("error")) == (429, "TOO_MANY_CONNECTIONS_FROM_IP")
        status, body = await upgrade_refusal(url, headers={"Forwarded": "for=203.0.113.4"})
        assert (status, body.get("error")) == (429, "TOO_MANY_CONNECTIONS_FROM_IP")
    finally:
        for client in clients:
            await client.close()
        clients.clear()
        untrusting.stop()

    trusting = start_node(1, "--max-connections-per-ip", "2", "--trusted-proxies", "127.0.0.1")
    url = trusting.ws_url(0)
    try:
        # From 127.0.0.1 (trusted) the header names the client: one 2001:db8:0:1::/64 holds two.
        for address in ("2001:db8:0:1::1", "2001:db8:0:1::ffff"):
            clients.append(await connect(url, headers={"X-Forwarded-For": address}))
        status, body = await upgrade_refusal(url, headers={"X-Forwarded-For": "2001:db8:0:1:abcd::2"})
        assert (status, body.get("error")) == (429, "TOO_MANY_CONNECTIONS_FROM_IP")
        clients.append(await connect(url, headers={"Forwarded": 'for="[2001:db8:0:2::1]:4711"'}))  # next /64
        # From 127.0.0.2 (not trusted) the header is ignored: 127.0.0.2 itself is counted.
        for _ in range(2):
            clients.append(await connect(url, source_ip="127.0.0.2", headers={"X-Forwarded-For": "198.51.100.1"}))
        status, body = await upgrade_refusal(url, source_ip="127.0.0.2", headers={"X-Forwarded-For": "198.51.100.2"})
        assert (status, body.get("error")) == (429, "TOO_MANY_CONNECTIONS_FROM_IP")
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-network", "10.1.2.3/8"])
def test_a_worker_refuses_to_start_with_a_bad_trusted_proxy(bad):
    from node.config import NodeConfig
    from node.bus_memory import MemoryBus
    from node.worker import Worker

    config = NodeConfig(bus="memory", workers=1, trusted_proxies=[bad])
    with pytest.raises(ValueError, match="trusted proxy"):
        Worker(config, MemoryBus())
