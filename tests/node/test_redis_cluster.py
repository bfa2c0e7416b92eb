"""The bus on a Redis Cluster (`--bus redis-cluster`): sharded pub/sub, per-shard subscribers, faults.

Real processes: a local Redis Cluster (chaos/redis_topologies.py: 3 masters,
or 3 masters with one replica each) and a node of two workers on
`redis+cluster://`. Rooms are chosen so their slots are on every shard.

- Rooms on all three shards: members on both workers get every message in
  order; each master holds one subscriber connection per worker (not one per
  room), and only the owning master knows a room's shard channel.
- `CLIENT KILL TYPE pubsub` on one master: the workers' /readyz goes 503
  (busConnected false) and back to 200; what was published meanwhile
  reaches the members (gap filled from history), nothing skipped.
- A cluster on TLS only (`rediss+cluster://`, client certificates, TLS
  between the nodes): commands and shard subscriptions both go over TLS.
- A burst of history reads larger than the bus's connections per master
  waits for free connections instead of failing.
- A master SIGKILLed while messages flow, its replica promoted: publishes
  are acknowledged again; members get every acknowledged message of the new
  epoch, and of the old one a contiguous prefix, the rest announced by the
  new epoch (`joined {recovered: false}`), never a silent gap.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from redis.crc import key_slot

from chaos.cluster import NodeProcess, free_port_range, http_json
from chaos.eventually import eventually
from chaos.redis_topologies import RedisClusterGroup, make_tls_files
from common.redis_connect import RedisTarget
from node.bus_cluster import RedisClusterBus
from node.bus_redis import RedisBusSettings
from node.history import HistoryPolicy
from tests.delivery.epochs import assert_nothing_lost_silently, by_epoch, failover_traffic, publish_until_stopped
from tests.delivery.resuming import ResumingReader
from tests.wsclient import WsClient

CHANNEL_PREFIX = "ringcast:room:"
NODE_FLAGS = (
    "--bus", "redis-cluster", "--bus-timeout-s", "1", "--bus-reconnect-base-s", "0.1", "--bus-reconnect-cap-s", "0.5",
    "--history-size", "2000", "--history-ttl-s", "600", "--message-rate-per-s", "1000", "--message-burst", "1000",
    "--placement-hint", "off",
)


def channel(room: str) -> str:
    return f"{CHANNEL_PREFIX}{{{room}}}"


def rooms_on_every_shard(group: RedisClusterGroup, per_shard: int) -> dict[int, list[str]]:
    """`per_shard` room names for each master (by port), found by their channel's slot."""
    masters = {node.port: node for node in group.nodes[:group.masters]}
    owner_of_slot: dict[int, int] = {}
    rooms: dict[int, list[str]] = {port: [] for port in masters}
    for i in range(10_000):
        room = f"chat:{i}"
        slot = key_slot(channel(room).encode())
        if slot not in owner_of_slot:
            owner_of_slot[slot] = group.master_of_slot(slot).port
        if len(rooms[owner_of_slot[slot]]) < per_shard:
            rooms[owner_of_slot[slot]].append(room)
        if all(len(names) == per_shard for names in rooms.values()):
            return rooms
    raise AssertionError("no rooms found on every shard")


def readiness(node: NodeProcess, index: int) -> tuple[int, bool | None]:
    status, body = http_json(node.http_url(index, "/readyz"))
    return status, body.get("busConnected")


def pubsub_clients(server) -> list[str]:
    return [line for line in server.command("CLIENT", "LIST", "TYPE", "pubsub").decode().splitlines() if line]


def shard_subscribers(server, name: str) -> int:
    out = server.command("PUBSUB", "SHARDNUMSUB", name).split()
    return int(out[1])


def start_node(started: list, url: str, *extra: str) -> NodeProcess:
    node = NodeProcess(port=free_port_range(2), workers=2, args=["--redis", url, *NODE_FLAGS, *extra])
    started.append(node)
    return node.start()


@pytest.fixture
def cluster3x2():
    group = RedisClusterGroup(masters=3, replicas=1).start()
    try:
        yield group
    finally:
        group.stop()


async def test_rooms_on_every_shard_reach_both_workers_over_one_subscriber_per_shard(cluster3, started):
    node = start_node(started, cluster3.url)
    rooms_by_port = rooms_on_every_shard(cluster3, per_shard=2)
    rooms = [room for names in rooms_by_port.values() for room in names]
    count = 15
    members = [ResumingReader([node.ws_url(i)], room) for room in rooms for i in (0, 1)]
    readers = [asyncio.create_task(m.run(until_seq=count, deadline_s=60)) for m in members]
    publishers = [await WsClient.connect(node.ws_url(i)) for i in (0, 1)]
    try:
        await asyncio.wait_for(asyncio.gather(*(m.joined_once.wait() for m in members)), 15)
        for client in publishers:
            for room in rooms:
                await client.join(room)
        for n in range(count):
            for k, room in enumerate(rooms):
                client = publishers[(n + k) % 2]  # each room's messages come from both workers
                await client.send({"type": "message", "room": room, "data": {"n": n}, "id": n})
                ack = await client.expect("ack")
                assert ack["seq"] == n + 1, ack
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        # The publishers are still members of every room on both workers.
        for server in cluster3.nodes:
            # Two workers, two rooms on this shard each: one subscriber connection per worker, not one per room.
            assert len(pubsub_clients(server)) == 2, pubsub_clients(server)
            for owner_port, names in rooms_by_port.items():
                for room in names:
                    expected = 2 if owner_port == server.port else 0
                    assert shard_subscribers(server, channel(room)) == expected, (room, server.port, owner_port)
    finally:
        for client in publishers:
            await client.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    for member in members:
        assert member.seqs == list(range(1, count + 1)), (member.room, member.seqs, member.gaps)
        assert member.duplicates == 0 and member.out_of_order == 0


async def test_a_killed_shard_subscription_turns_readyz_red_and_the_gap_is_filled(cluster3, started):
    # A longer first reconnect delay (between 1 and 2 s) keeps the outage long enough to be seen and published into.
    node = start_node(started, cluster3.url, "--bus-reconnect-base-s", "2", "--bus-reconnect-cap-s", "2")
    rooms_by_port = rooms_on_every_shard(cluster3, per_shard=1)
    victim_port, (room,) = next(iter(rooms_by_port.items()))
    victim = next(server for server in cluster3.nodes if server.port == victim_port)
    other_room = next(names[0] for port, names in rooms_by_port.items() if port != victim_port)
    members = [ResumingReader([node.ws_url(i)], r) for r in (room, other_room) for i in (0, 1)]
    readers = [asyncio.create_task(m.run(until_seq=10**9, deadline_s=90)) for m in members]
    publisher = await WsClient.connect(node.ws_url(1))
    acked: list[tuple[str, int]] = []
    acked_while_down: list[int] = []
    statuses: dict[int, list[int]] = {0: [], 1: []}
    stop = asyncio.Event()

    def note_if_down(frame: dict) -> None:
        if any(status and status[-1] == 503 for status in statuses.values()):
            acked_while_down.append(frame["seq"])

    async def watch_readiness() -> None:
        while not stop.is_set():
            for index in (0, 1):
                status, connected = await asyncio.to_thread(readiness, node, index)
                assert (status == 200) == bool(connected), (status, connected)
                statuses[index].append(status)
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(asyncio.gather(*(m.joined_once.wait() for m in members)), 15)
        await publisher.join(room)
        watching = asyncio.create_task(watch_readiness())
        publishing = asyncio.create_task(
            publish_until_stopped(publisher, room, acked, stop, on_ack=note_if_down, interval_s=0.02))
        await eventually(lambda: len(acked) >= 20, what="messages before the kill")
        killed = victim.command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed.strip() == b"2", killed  # one subscriber connection of each worker
        await eventually(lambda: all(503 in seen for seen in statuses.values()), what="both workers' /readyz 503",
                         timeout_s=15)
        await eventually(lambda: all(seen[-1] == 200 for seen in statuses.values()), what="/readyz 200 again",
                         timeout_s=30)
        await eventually(lambda: len(acked) >= len(acked_while_down) + 40, what="messages after the recovery")
        stop.set()
        await asyncio.wait_for(asyncio.gather(publishing, watching), 15)
        assert acked_while_down, "nothing was published while the subscription was down: the test proved nothing"
        seqs = [seq for _, seq in acked]
        assert seqs == list(range(1, len(seqs) + 1)) and len(set(epoch for epoch, _ in acked)) == 1
        victim_members = [m for m in members if m.room == room]
        await eventually(lambda: all(m.last_seq == seqs[-1] for m in victim_members),
                         what="every member of the room to have every message", timeout_s=30)
        assert len(pubsub_clients(victim)) == 2  # both workers subscribed again on that shard
    finally:
        stop.set()
        await publisher.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    for member in members:
        if member.room == room:
            assert member.seqs == seqs, (member.seqs[:5], member.gaps)
            assert member.duplicates == 0 and member.out_of_order == 0 and not member.gaps
    for index in (0, 1):
        assert readiness(node, index) == (200, True)


async def test_a_master_killed_while_messages_flow_its_replica_takes_over(cluster3x2, started):
    node = start_node(started, cluster3x2.url)
    rooms_by_port = rooms_on_every_shard(cluster3x2, per_shard=1)
    master_port, (room,) = next(iter(rooms_by_port.items()))
    master = next(server for server in cluster3x2.nodes if server.port == master_port)
    replica = cluster3x2.replica_of(master)
    slot = key_slot(channel(room).encode())
    async with failover_traffic(node, room) as traffic:
        members, acked = traffic.members, traffic.acked
        await eventually(lambda: len(acked) >= 30, what="messages acknowledged by the first master")
        old_epoch = acked[0][0]
        await asyncio.to_thread(master.kill)  # SIGKILL while the publisher is mid-stream
        await eventually(lambda: cluster3x2.master_of_slot(slot).port == replica.port,
                         what="the replica promoted to master of the room's slot", timeout_s=30)
        new_epoch = await traffic.settle_in_the_new_epoch(old_epoch)
        # Both workers follow the slot to the promoted replica, and are ready again.
        for index in (0, 1):
            await eventually(lambda: readiness(node, index) == (200, True), what=f"worker {index} ready again")
        assert shard_subscribers(replica, channel(room)) == 2

    assert_nothing_lost_silently(members, acked, old_epoch, new_epoch)


async def test_a_burst_of_history_reads_waits_for_connections_instead_of_failing(cluster3):
    bus = RedisClusterBus(RedisBusSettings(
        url=cluster3.url, channel_prefix=CHANNEL_PREFIX, key_prefix="ringcast:", timeout_s=5, reconnect_base_s=0.1,
        reconnect_cap_s=0.5, room_state_ttl_s=60, policy_for=lambda room: HistoryPolicy(100, 60), max_connections=3,
    ))
    await bus.start()
    try:
        room = rooms_on_every_shard(cluster3, per_shard=1)[cluster3.nodes[0].port][0]  # every read on one master
        for n in range(5):
            await bus.publish(room, b"m%d" % n)
        pages = await asyncio.gather(*(bus.read_history(room, 0, "", 10) for _ in range(60)))
        assert all([m.body for m in page.messages] == [b"m%d" % n for n in range(5)] for page in pages)
    finally:
        await bus.close()


async def test_a_room_whose_slot_moves_to_another_master_follows_it(cluster3, started):
    node = start_node(started, cluster3.url)
    rooms_by_port = rooms_on_every_shard(cluster3, per_shard=1)
    (source_port, (room,)), (target_port, _) = list(rooms_by_port.items())[:2]
    source = next(server for server in cluster3.nodes if server.port == source_port)
    target = next(server for server in cluster3.nodes if server.port == target_port)
    slot = key_slot(channel(room).encode())
    async with failover_traffic(node, room) as traffic:
        members, acked = traffic.members, traffic.acked
        await eventually(lambda: len(acked) >= 30, what="messages before the slot moves")
        assert shard_subscribers(source, channel(room)) == 2
        await asyncio.to_thread(cluster3.move_slot, slot, source, target)  # while the publisher is mid-stream
        await eventually(lambda: shard_subscribers(target, channel(room)) == 2,
                         what="both workers subscribed on the slot's new master", timeout_s=30)
        assert shard_subscribers(source, channel(room)) == 0
        count_then = len(acked)
        await eventually(lambda: len(acked) >= count_then + 20, what="publishes after the move", timeout_s=30)
        await traffic.stop_publishing()
        last = acked[-1]
        await eventually(lambda: all(m.positions[-1:] == [last] for m in members),
                         what="every member to reach the last message", timeout_s=30)
        for index in (0, 1):
            await eventually(lambda: readiness(node, index) == (200, True), what=f"worker {index} ready")
    acked_streams = by_epoch(acked)
    for member in members:
        streams = by_epoch(member.positions)
        assert set(streams) <= set(acked_streams), streams.keys()
        for epoch, seqs in streams.items():
            # Inside one epoch nothing is skipped; the newest epoch is complete.
            assert seqs == list(range(1, len(seqs) + 1)), (epoch, seqs[:5], member.gaps)
        newest = list(acked_streams)[-1]
        assert streams[newest] == acked_streams[newest]
        assert member.duplicates == 0 and member.out_of_order == 0


async def test_a_tls_cluster_carries_commands_and_shard_subscriptions(tmp_path):
    files = make_tls_files(tmp_path / "tls").files
    group = RedisClusterGroup(masters=3, tls=files).start()
    try:
        target = RedisTarget.from_settings(SimpleNamespace(
            redis=group.url, redis_password="", redis_password_file="", redis_sentinel_password_file="",
            redis_tls_ca_file=files.ca_file, redis_tls_cert_file=files.client_cert_file,
            redis_tls_key_file=files.client_key_file, redis_tls_check_hostname=True,
        ))
        received = []
        bus = RedisClusterBus(RedisBusSettings(
            url=target, channel_prefix=CHANNEL_PREFIX, key_prefix="ringcast:", timeout_s=5, reconnect_base_s=0.1,
            reconnect_cap_s=0.5, room_state_ttl_s=60, policy_for=lambda room: HistoryPolicy(100, 60),
        ))
        bus.set_handlers(received.append)
        await bus.start()
        try:
            rooms = [names[0] for names in rooms_on_every_shard(group, per_shard=1).values()]
            for room in rooms:
                await bus.subscribe(room)
            assert len(bus.sharded.shards) == 3
            await eventually(lambda: bus.connected, what="every shard connection resynced")
            for room in rooms:
                assert (await bus.publish(room, b"over tls")).seq == 1
            await eventually(lambda: sorted(m.room for m in received) == sorted(rooms), what="every room's message")
            page = await bus.read_history(rooms[0], 0, "", 10)
            assert [m.body for m in page.messages] == [b"over tls"]
        finally:
            await bus.close()
    finally:
        group.stop()
