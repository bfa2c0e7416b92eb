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
from dataclasses import dataclass, field

import pytest

from chaos.cluster import ControlProcess, NodeProcess, RouterProcess, free_port, free_port_range, http_json
from chaos.eventually import eventually
from chaos.redis_topologies import SentinelGroup
from router.client_core import Message
from tests.delivery.resuming import RETRY_CODES, ResumingReader
from tests.wsclient import WsClient

NODE_FLAGS = (
    "--bus", "redis", "--bus-timeout-s", "1", "--bus-reconnect-base-s", "0.1", "--bus-reconnect-cap-s", "0.5",
    "--history-size", "2000", "--history-ttl-s", "600", "--message-rate-per-s", "1000", "--message-burst", "1000",
    "--placement-hint", "off", "--control-heartbeat-interval-s", "0.5",
)
ROOM = "chat:failover"


@dataclass
class EpochReader(ResumingReader):
    """A resuming member that also keeps each message's (epoch, seq), in arrival order."""

    positions: list[tuple[str, int]] = field(default_factory=list)

    def _record(self, event):
        if isinstance(event, Message):
            self.positions.append((event.frame["epoch"], event.frame["seq"]))
        return super()._record(event)


@pytest.fixture
def sentinel_group():
    group = SentinelGroup().start()
    try:
        yield group
    finally:
        group.stop()


async def publish_until_stopped(client: WsClient, acked: list[tuple[str, int]], stop: asyncio.Event) -> None:
    """Publish one message at a time, each acknowledged before the next; retry through the failover."""
    n = 0
    while not stop.is_set():
        await client.send({"type": "message", "room": ROOM, "data": {"n": n}, "id": n})
        frame = await client.expect_any(("ack", "error"), timeout_s=10)
        if frame["type"] == "ack":
            acked.append((frame["epoch"], frame["seq"]))
            n += 1
            await asyncio.sleep(0.01)
        else:
            assert frame["code"] in RETRY_CODES, frame
            await asyncio.sleep(0.1)


def by_epoch(positions: list[tuple[str, int]]) -> dict[str, list[int]]:
    streams: dict[str, list[int]] = {}
    for epoch, seq in positions:
        streams.setdefault(epoch, []).append(seq)
    return streams


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

    members = [EpochReader([node.ws_url(i % 2), node.ws_url(1 - i % 2)], ROOM) for i in range(4)]
    readers = [asyncio.create_task(m.run(until_seq=10**9, deadline_s=120)) for m in members]
    publisher = await WsClient.connect(node.ws_url(1))
    try:
        await asyncio.wait_for(asyncio.gather(*(m.joined_once.wait() for m in members)), 15)
        await publisher.join(ROOM)
        acked: list[tuple[str, int]] = []
        stop = asyncio.Event()
        publishing = asyncio.create_task(publish_until_stopped(publisher, acked, stop))
        await eventually(lambda: len(acked) >= 30, what="messages acknowledged by the first master")
        old_epoch = acked[0][0]

        old_master_port = sentinel_group.master.port
        await asyncio.to_thread(sentinel_group.kill_master)  # SIGKILL while the publisher is mid-stream
        await eventually(lambda: sentinel_group.master_port_now() == sentinel_group.replica.port,
                         what="the sentinels to promote the replica", timeout_s=30)
        assert sentinel_group.replica.port != old_master_port

        # Publishes are acknowledged again, on the new master, in a new epoch (other replication ID).
        await eventually(lambda: sum(1 for epoch, _ in acked if epoch != old_epoch) >= 20,
                         what="publishes acknowledged after the failover", timeout_s=30)
        stop.set()
        await asyncio.wait_for(publishing, 15)
        epochs = list(dict.fromkeys(epoch for epoch, _ in acked))
        assert epochs[0] == old_epoch and len(epochs) == 2, epochs
        new_epoch = epochs[1]
        acked_streams = by_epoch(acked)
        assert acked_streams[new_epoch] == list(range(1, len(acked_streams[new_epoch]) + 1))

        def everyone_has_the_new_epoch() -> bool:
            return all(by_epoch(m.positions).get(new_epoch, [])[-1:] == acked_streams[new_epoch][-1:] for m in members)
        await eventually(everyone_has_the_new_epoch, what="every member to receive the new epoch's messages",
                         timeout_s=30)
    finally:
        await publisher.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    for member in members:
        streams = by_epoch(member.positions)
        assert set(streams) <= {old_epoch, new_epoch}, streams.keys()
        # Inside one epoch nothing is skipped: a contiguous run from 1 (the core repairs any gap).
        for epoch, seqs in streams.items():
            assert seqs == list(range(1, len(seqs) + 1)), (epoch, seqs[:5], member.gaps)
        # The new epoch: every acknowledged message, in order, once.
        assert streams[new_epoch] == acked_streams[new_epoch]
        # The old epoch: a prefix of what was acknowledged; anything after it is announced
        # lost by the move to the new epoch (which arrived, and was after the old one).
        old = streams.get(old_epoch, [])
        assert old == acked_streams[old_epoch][:len(old)]
        first_new = member.positions.index((new_epoch, streams[new_epoch][0]))
        assert all(epoch == old_epoch for epoch, _ in member.positions[:first_new])
        assert member.duplicates == 0 and member.out_of_order == 0
        # Every member is told, in a `joined` it can act on, that the old stream ended.
        told = [j for j in member.joins if j.get("epoch") == new_epoch and j.get("recovered") is False]
        assert told and told[0].get("reason") == "epoch_changed", member.joins
        for rejoin in member.rejoins:  # a resume across the failover says it could not recover
            if rejoin.since["epoch"] == old_epoch and rejoin.joined["epoch"] == new_epoch:
                assert rejoin.recovered is False and rejoin.joined.get("reason") == "epoch_changed", rejoin

    # Router and control plane followed the failover too.
    await eventually(lambda: http_json(router.url("/healthz"))[1].get("redisReachable") is True,
                     what="the router reading the ring from the new master")
    await eventually(lambda: control.get("/healthz")[1].get("redisConnected") is True,
                     what="the control plane on the new master")
    await eventually(lambda: sentinel_group.replica.command("HLEN", "ringcast:nodes:heartbeat").strip() == b"2",
                     what="both workers' heartbeats on the new master")
