"""Every control-plane write is fenced by the leader lease: a deposed leader cannot write anything.

A leader that was paused (GC, SIGSTOP, a stalled VM) past its lease, and that
resumes in the middle of a tick or a mutation, must not revert what its
successor wrote since: each write checks the lease value in the same Lua
script, is refused (`NotLeader`, logged and counted), and the replica steps
down. Against a real Redis (the store and the controller) and real processes
(SIGSTOP / SIGCONT of a replica).
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis.asyncio as aioredis

from chaos.eventually import eventually
from common.keys import ACTIVE, DRAINING, Keys
from common.records import Command, Heartbeat
from control.config import ControlConfig
from control.detector import MemberRecord
from control.leader import Controller
from control.lease import LeaderLease
from control.metrics import ControlMetrics
from control.store import ControlStore, NotLeader
from router.ring import Member, Ring
from tests.control.helpers import events_of, leader_caught_up, node_view, ring_of, wait_ring

KEYS = Keys("ringcast:")
NODE = "127.0.0.1:9"


def replica(client: aioredis.Redis, name: str) -> tuple[LeaderLease, ControlStore, Controller]:
    config = ControlConfig(replica_id=name, dead_after_s=600.0, auto_rebalance=False)
    lease = LeaderLease(client, KEYS.leader, name, f"http://{name}", lease_s=30.0)
    store = ControlStore(client, KEYS, config.max_events)
    return lease, store, Controller(config, store, lease, ControlMetrics(name))


async def redis_state(client: aioredis.Redis) -> dict:
    """Everything a leader writes, raw, to compare before and after a refused write."""
    return {
        "ring": await client.get(KEYS.ring),
        "members": await client.hgetall(KEYS.members),
        "command": await client.get(KEYS.command(NODE)),
        "events": await client.lrange(KEYS.events, 0, -1),
        "event_seq": await client.get(KEYS.event_seq),
        "generation": await client.get(KEYS.rebalance_generation),
        "heartbeats": await client.hgetall(KEYS.heartbeats),
    }


async def take_over(client: aioredis.Redis, old: LeaderLease, new: LeaderLease) -> None:
    """The old holder's lease runs out in Redis (deleted here, as if it expired) and the new one takes it.

    The old holder is not told: like a paused process, it still believes it leads.
    """
    await client.delete(KEYS.leader)
    assert await new.refresh() is True
    assert old.is_leader  # its own clock has not caught up yet: only the fence can stop it


async def lead(lease: LeaderLease, store: ControlStore) -> None:
    """Take the lease and write in its term (what the controller does at the start of each tick)."""
    assert await lease.refresh() is True
    store.fence = lease.value


async def test_every_write_of_a_deposed_leaders_store_is_refused_and_changes_nothing(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        old_lease, old_store, _ = replica(client, "old")
        new_lease, new_store, _ = replica(client, "new")
        await lead(old_lease, old_store)
        # While it leads, every write goes through.
        await old_store.write_records([MemberRecord(id=NODE, url=f"ws://{NODE}/ws")])
        await old_store.set_command(NODE, Command(version=1, state=ACTIVE))
        await old_store.add_event("joined", NODE, {})
        assert await old_store.next_rebalance_generation() == 1
        await old_store.publish_ring(Ring([Member(NODE, f"ws://{NODE}/ws")], 1))

        await take_over(client, old_lease, new_lease)
        new_store.fence = new_lease.value
        before = await redis_state(client)
        refused = {
            "write_records": old_store.write_records([MemberRecord(id=NODE, url=f"ws://{NODE}/ws", desired=DRAINING)]),
            "set_command": old_store.set_command(NODE, Command(version=2, state=DRAINING)),
            "add_event": old_store.add_event("drain", NODE, {}),
            "next_rebalance_generation": old_store.next_rebalance_generation(),
            "forget_node": old_store.forget_node(NODE),
            "publish_ring": old_store.publish_ring(Ring([], 2)),
        }
        for name, write in refused.items():
            with pytest.raises(NotLeader):
                await write
            assert await redis_state(client) == before, f"{name} of a deposed leader changed Redis"
        assert old_store.refused_writes == len(refused)

        # The new holder's writes go through, and events keep one sequence.
        await new_store.set_command(NODE, Command(version=2, state=DRAINING))
        event = await new_store.add_event("drain", NODE, {"windowS": 0})
        assert event["seq"] == 2 and (await new_store.events(10))[0] == event
        assert await new_store.command(NODE) == Command(version=2, state=DRAINING)
        assert new_store.refused_writes == 0
    finally:
        await client.aclose()


async def test_a_write_decided_in_an_earlier_term_is_refused_even_when_the_replica_leads_again(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        lease, store, _ = replica(client, "a")
        await lead(lease, store)
        first_term = lease.value
        await client.delete(KEYS.leader)  # the lease ran out while it was paused; nobody else took it
        assert await lease.refresh() is False  # its renewal finds the lease gone
        assert await lease.refresh() is True and lease.value != first_term  # it leads again, in a new term
        with pytest.raises(NotLeader):
            await store.set_command(NODE, Command(version=9, state=DRAINING))  # still carrying the first term's token
        assert await client.get(KEYS.command(NODE)) is None
    finally:
        await client.aclose()


async def test_a_leader_paused_in_the_middle_of_an_undrain_cannot_revert_its_successors_drain(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        now_s, _ = await client.time()
        await client.hset(KEYS.heartbeats, NODE, Heartbeat(id=NODE, url=f"ws://{NODE}/ws", state=ACTIVE).to_json())
        await client.hset(KEYS.seen, NODE, now_s * 1000)
        old_lease, old_store, old = replica(client, "old")
        new_lease, new_store, new = replica(client, "new")
        assert await old_lease.refresh() is True
        assert NODE in await old.tick()  # joined, in the ring

        # An operator's undrain reaches the old leader, which is paused right after reading its snapshot.
        read, resume = asyncio.Event(), asyncio.Event()
        snapshot = old_store.snapshot

        async def paused_snapshot():
            snap = await snapshot()
            read.set()
            await resume.wait()
            return snap
        old_store.snapshot = paused_snapshot
        undrain = asyncio.create_task(old.undrain(NODE))
        await eventually(read.is_set, what="the old leader to read its snapshot")

        # Meanwhile its lease runs out, the other replica leads, and another operator drains the node there.
        await take_over(client, old_lease, new_lease)
        drained = await new.drain(NODE, 0.0, 30.0)
        assert drained["desired"] == DRAINING
        after_drain = await redis_state(client)

        resume.set()  # the old leader wakes up and carries on with its undrain
        with pytest.raises(NotLeader):
            await undrain
        assert not old_lease.is_leader  # the refused write made it step down at once
        assert old_store.refused_writes >= 1
        assert await redis_state(client) == after_drain
        record = (await new_store.snapshot()).records[NODE]
        command = await new_store.command(NODE)
        assert (record.desired, command.state) == (DRAINING, DRAINING)
        assert NODE not in await new_store.ring()
        assert "undrain" not in [e["kind"] for e in await new_store.events(50)]
    finally:
        await client.aclose()


async def test_a_replica_sigstopped_past_its_lease_does_not_revert_the_drain_made_by_its_successor(
    start_node, start_control
):
    first = start_control()
    second = start_control()
    node = start_node(2)
    await wait_ring(first, lambda r: len(r) == 2, "both workers in the ring")

    def the_leader():
        leading = [r for r in (first, second) if r.is_leader()]
        return leading[0] if len(leading) == 1 else None
    old = await eventually(the_leader, what="exactly one leader")
    new = second if old is first else first
    worker = f"127.0.0.1:{node.port + 1}"

    assert old.proc is not None
    os.kill(old.proc.pid, signal.SIGSTOP)
    try:
        await eventually(new.is_leader, what="the other replica to take the lease", timeout_s=20)
        status, answer = new.call("POST", f"/v1/nodes/{worker}/drain", {"windowS": 0})
        assert status == 202, answer
        drained_ring = ring_of(new)
        assert worker not in drained_ring
    finally:
        os.kill(old.proc.pid, signal.SIGCONT)

    # The old replica runs again: it answers, knows it does not lead, and the drain stands.
    await eventually(lambda: old.get("/healthz")[1].get("leader") is False, what="the old replica to answer as follower",
                     timeout_s=20)
    await leader_caught_up(new)
    await leader_caught_up(new)  # two full ticks of the new leader after the old one woke up
    assert new.is_leader() and not old.is_leader()
    assert ring_of(new).to_dict() == drained_ring.to_dict() == ring_of(old).to_dict()
    view = node_view(new, worker)
    assert view["desired"] == DRAINING and not view["inRing"]
    assert "undrain" not in [e["kind"] for e in events_of(new)]
