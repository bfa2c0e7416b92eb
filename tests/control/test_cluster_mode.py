"""The whole stack on a Redis Cluster: control plane, router ring, heartbeats, placement, bus.

Real processes on a local 3-master Redis Cluster (chaos/redis_topologies.py):
a node of two workers with `--bus redis-cluster`, one `ringcast control` and
one `ringcast router`, all on the same `redis+cluster://` URL. The control
keys carry the hash tag `{ctl}` (common/keys.py), so they are all on one slot
and every fenced write and heartbeat script runs on one shard.

- The heartbeats reach the control plane: both workers are in the ring it
  publishes, under `ringcast:{ctl}ring` on the master that owns that slot,
  and the workers' placement (GET /ring) follows that ring.
- The router follows that ring: /route names the ring's owner of a room;
  service discovery lists the router and the replica (presence hashes).
- A member joined at that owner receives a message a client of the other
  worker publishes (the sharded bus between the workers).
- A drain through the control API steers the member to the room's new owner
  (a `reconnect` notice naming it), and the router's answer follows.
"""

from __future__ import annotations

import json
import urllib.request

from redis.crc import key_slot

from chaos.cluster import ControlProcess, NodeProcess, RouterProcess, free_port, free_port_range, http_json
from chaos.eventually import eventually
from common.keys import Keys
from tests.control.helpers import node_view, ring_of, wait_ring
from tests.control.test_sd import discovered as discovered_labels
from tests.wsclient import WsClient

ADMIN_TOKEN = "test-admin-token"


def discovered(control: ControlProcess) -> set[str]:
    return set(discovered_labels(control))


def route(router: RouterProcess, room: str) -> dict:
    with urllib.request.urlopen(router.url(f"/route?room={room}"), timeout=2) as response:
        return json.loads(response.read())


async def test_control_router_and_node_run_on_a_redis_cluster(cluster3, started):
    url = cluster3.url
    node = NodeProcess(port=free_port_range(2), workers=2, args=["--redis", url, "--bus", "redis-cluster"])
    started.append(node)
    node.start()
    control = ControlProcess(port=free_port(), redis_url=url, admin_token=ADMIN_TOKEN)
    started.append(control)
    control.start()
    router = RouterProcess(port=free_port(), args=["--redis", url])
    started.append(router)
    router.start()

    ids = [f"127.0.0.1:{port}" for port in node.ports]
    ring = await wait_ring(control, lambda r: sorted(r.members) == ids, "both workers in the ring")
    ring_key = Keys(cluster=True).ring
    assert ring_key == "ringcast:{ctl}ring"
    stored = cluster3.master_of_slot(key_slot(ring_key.encode())).command("GET", ring_key)
    assert json.loads(stored)["epoch"] == ring.epoch

    room = "cluster-mode-room"
    owner = ring.route(room)
    other = next(i for i, member_id in enumerate(ids) if member_id != owner.id)
    owner_index = ids.index(owner.id)
    await eventually(lambda: route(router, room)["url"] == owner.url, what="the router to follow the ring")
    # The workers' placement follows the published ring too (not their own lone-node ring, epoch 0).
    for index in (0, 1):
        await eventually(lambda: http_json(node.http_url(index, "/ring"))[1].get("epoch") == ring.epoch,
                         what=f"worker {index} to read the ring epoch {ring.epoch}")
    # Presence hashes (the router's and the replica's entries) are read on the cluster too.
    expected_targets = {*ids, f"127.0.0.1:{control.port}", f"127.0.0.1:{router.port}"}
    await eventually(lambda: discovered(control), equals=expected_targets,
                     what="service discovery to list the workers, the replica and the router")

    member = await WsClient.connect(node.ws_url(owner_index))
    publisher = await WsClient.connect(node.ws_url(other))
    try:
        await member.join(room)
        await publisher.join(room)
        await publisher.send({"type": "message", "room": room, "data": {"hello": "cluster"}, "id": 1})
        assert (await publisher.expect("ack"))["seq"] == 1
        message = await member.expect("message", timeout_s=10)
        assert message["data"] == {"hello": "cluster"} and message["seq"] == 1

        status, answer = control.call("POST", f"/v1/nodes/{owner.id}/drain", {"windowS": 1})
        assert status == 202, answer
        notice = await member.expect("reconnect", timeout_s=30)
        assert notice["reason"] == "drain" and notice["url"] == node.ws_url(other)
        assert ring_of(control).route(room).id == ids[other]
        await eventually(lambda: route(router, room)["url"] == node.ws_url(other),
                         what="the router to name the new owner")
        await eventually(lambda: node_view(control, owner.id).get("state") == "drained",
                         what="the drained worker to report it", timeout_s=30)
    finally:
        await member.close()
        await publisher.close()
