"""Public URLs and internal addresses through the control plane, from real processes.

A node whose workers are given to clients under a public URL template (a proxy's, which does
not even resolve here) and are reached internally at their advertised host: the membership,
the published ring and the workers' /route carry the public URL, and every place where the
control plane or Prometheus reaches a worker itself (service discovery, `ringcast ctl top`)
uses the address.
"""

from __future__ import annotations

from chaos.cluster import http_json
from chaos.eventually import eventually
from tests.control.helpers import wait_ring
from tests.control.test_ctl_top import top
from tests.router.helpers import room_owned_by

TEMPLATE = "wss://edge.invalid/w/{node_id}-{index}"


def public(index: int) -> str:
    return f"wss://edge.invalid/w/edge-c-{index}"


async def test_the_ring_carries_public_urls_and_the_control_plane_reaches_workers_at_their_addresses(
    start_node, start_control
):
    node = start_node(2, "--advertise-host", "127.0.0.1", "--node-id", "edge-c", "--public-url", TEMPLATE)
    control = start_control()
    ids = [f"edge-c:{port}" for port in node.ports]
    addresses = [f"127.0.0.1:{port}" for port in node.ports]

    ring = await wait_ring(control, lambda r: sorted(r.members) == ids and r.epoch >= 1, what="both workers in the ring")
    assert [(m.url, m.address) for m in sorted(ring.members.values(), key=lambda m: m.id)] == [
        (public(0), addresses[0]), (public(1), addresses[1])]

    status, body = control.get("/v1/nodes")
    assert status == 200
    assert [(n["id"], n["url"], n["address"]) for n in body["nodes"]] == [
        (ids[0], public(0), addresses[0]), (ids[1], public(1), addresses[1])]

    # The workers follow the published ring and hand out the public URL of the owner.
    room = room_owned_by(ring, ids[1])
    for index in range(2):
        await eventually(lambda: http_json(node.http_url(index, f"/route?room={room}"))[1],
                         equals={"room": room, "node": ids[1], "url": public(1), "epoch": ring.epoch},
                         what=f"worker {index} to route by the published ring")

    # Prometheus is sent to the addresses, never to the public URL's host.
    status, groups = control.get("/v1/sd/prometheus")
    assert status == 200
    workers = {group["labels"]["worker"]: group for group in groups if group["labels"]["job"] == "ringcast-node"}
    assert {worker: (group["targets"], group["labels"]["node"]) for worker, group in workers.items()} == {
        ids[0]: ([addresses[0]], "127.0.0.1"), ids[1]: ([addresses[1]], "127.0.0.1")}

    # `ctl top` scrapes each worker's /metrics at its address (edge.invalid would not resolve).
    code, out, err = await top(control.url, "--once")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("edge-c:")}
    assert sorted(lines) == ids
    assert not [line for line in lines.values() if "unreachable" in line], out
