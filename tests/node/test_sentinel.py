"""The bus on Redis Sentinel: a master SIGKILLed while messages flow, the replica promoted.

Real processes: a master, one replica and three `redis-sentinel`
(chaos/redis_topologies.py), a node of two workers, a router and a control
plane, all on `redis+sentinel://`. Resuming members (the SDK core) on both
workers; a publisher waits for each ack. After the failover, publishes are
acknowledged again on the new master; every member ends with every message
acknowledged in the new epoch, and in the old one a contiguous prefix: what it
misses of the old epoch is announced by the new epoch (the promoted replica
has another replication ID), never a silent gap inside one epoch.
"""

from __future__ import annotations

import asyncio

import pytest

from chaos.cluster import ControlProcess, NodeProcess, RouterProcess, free_port, free_port_range, http_json
from chaos.eventually import eventually
from chaos.redis_topologies import SentinelGroup
from tests.delivery.epochs import assert_nothing_lost_silently, failover_traffic

NODE_FLAGS = (
    "--bus", "redis", "--bus-timeout-s", "1", "--bus-reconnect-base-s", "0.1", "--bus-reconnect-cap-s", "0.5",
    "--history-size", "2000", "--history-ttl-s", "600", "--message-rate-per-s", "1000", "--message-burst", "1000",
    "--placement-hint", "off", "--control-heartbeat-interval-s", "0.5",
)
ROOM = "chat:failover"


@pytest.fixture
def sentinel_group():
    group = SentinelGroup().start()
    try:
        yield group
    finally:
        group.stop()


async def test_master_killed_while_messages_flow_failover_loses_nothing_silently(sentinel_group, started):
    url = sentinel_group.url
    node = NodeProcess(port=free_port_range(2), workers=2, args=["--redis", url, *NODE_FLAGS])
    started.append(node)
    node.start()
    router = RouterProcess(port=free_port(), args=["--redis", url, "--nodes", f"127.0.0.1:{node.port}"])
    started.append(router)
    router.start()
    control = ControlProcess(port=free_port(), redis_url=url, admin_token="sentinel-admin")
    started.append(control)
    control.start()

    async with failover_traffic(node, ROOM) as traffic:
        members, acked = traffic.members, traffic.acked
        await eventually(lambda: len(acked) >= 30, what="messages acknowledged by the first master")
        old_epoch = acked[0][0]

        old_master_port = sentinel_group.master.port
        await asyncio.to_thread(sentinel_group.kill_master)  # SIGKILL while the publisher is mid-stream
        await eventually(lambda: sentinel_group.master_port_now() == sentinel_group.replica.port,
                         what="the sentinels to promote the replica", timeout_s=30)
        assert sentinel_group.replica.port != old_master_port

        # Publishes are acknowledged again, on the new master, in a new epoch (other replication ID).
        new_epoch = await traffic.settle_in_the_new_epoch(old_epoch)

    assert_nothing_lost_silently(members, acked, old_epoch, new_epoch)

    # Router and control plane followed the failover too.
    await eventually(lambda: http_json(router.url("/healthz"))[1].get("redisReachable") is True,
                     what="the router reading the ring from the new master")
    await eventually(lambda: control.get("/healthz")[1].get("redisConnected") is True,
                     what="the control plane on the new master")
    await eventually(lambda: sentinel_group.replica.command("HLEN", "ringcast:nodes:heartbeat").strip() == b"2",
                     what="both workers' heartbeats on the new master")
