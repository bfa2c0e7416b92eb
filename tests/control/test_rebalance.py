"""Rebalance after a worker joins: only rooms whose owner changed move, to their new owner;
with auto-rebalance off, nothing moves until the operator asks."""

import pytest
import redis.asyncio as aioredis

from chaos.eventually import eventually
from chaos.fleet import Fleet
from common.keys import Keys
from tests.control.helpers import leader_caught_up, ring_of, wait_ring

ROOMS = [f"rebalance-{i}" for i in range(40)]


async def no_route(room: str) -> str:
    raise AssertionError("a rebalance notice must carry the new owner's url")


async def heartbeats(redis_url: str, node_ids: list[str], count: int, timeout_s: float = 20.0) -> None:
    """Wait until every worker in `node_ids` has heartbeated `count` more times.

    Counted from the Redis-clock stamp each beat writes (HASH nodes:seen): a poll that
    misses a change only makes the wait longer, never shorter.
    """
    redis = aioredis.Redis.from_url(redis_url)
    seen_key = Keys().seen
    last: dict[str, bytes | None] = {}
    beats = dict.fromkeys(node_ids, 0)

    async def counted() -> bool:
        for node_id, stamp in zip(node_ids, await redis.hmget(seen_key, node_ids)):
            if node_id in last and stamp != last[node_id]:
                beats[node_id] += 1
            last[node_id] = stamp
        return min(beats.values()) >= count

    try:
        await eventually(counted, what=f"{count} more heartbeats from each of {node_ids}", timeout_s=timeout_s)
    finally:
        await redis.aclose()


@pytest.mark.parametrize("automatic", [True, False], ids=["after-join", "on-demand"])
async def test_rebalance_moves_only_rooms_whose_owner_changed(start_node, start_control, redis_server, automatic):
    start_node(2)
    control = start_control(*([] if automatic else ["--no-auto-rebalance"]))
    before = await wait_ring(control, lambda r: len(r) == 2, "the first two workers in the ring")
    fleet = Fleet(ROOMS * 2, lambda room: before.route(room).url, resolve=no_route)  # two members per room
    await fleet.start()
    try:
        await eventually(fleet.all_joined, what="every client joined on its room's owner", timeout_s=30)
        joiner = start_node(1)
        joiner_id = f"127.0.0.1:{joiner.port}"
        after = await wait_ring(control, lambda r: joiner_id in r, "the new worker in the ring")
        moved = {room for room in ROOMS if after.owner_id(room) != before.owner_id(room)}
        assert moved and moved != set(ROOMS)
        assert all(after.owner_id(room) == joiner_id for room in moved)  # consistent hashing: only to the joiner

        if not automatic:
            # Nothing may move before the operator asks. An automatic rebalance would be ordered in
            # the tick that published `after`: wait until that tick is over, then for two heartbeats
            # of every old worker (the first reads its command back, the second reports what it did).
            await leader_caught_up(control)
            await heartbeats(redis_server.url, sorted(before.members), count=2)
            progress = control.get("/v1/rebalance")[1]
            assert progress["generation"] == 0 and progress["nodes"] == [], progress
            steered_early = [(c.room, c.notices) for c in fleet.clients if c.notices]
            assert steered_early == [], "clients were steered before POST /v1/rebalance"
            status, answer = control.call("POST", "/v1/rebalance")
            # Generation 1: the leader had started no rebalance of its own.
            assert status == 202 and answer["ringEpoch"] == after.epoch and answer["generation"] == 1, answer

        def moved_rooms_on_new_owner() -> bool:
            return fleet.all_joined() and all(c.worker == joiner_id for c in fleet.clients if c.room in moved)
        await eventually(moved_rooms_on_new_owner, what="members of moved rooms on the new owner", timeout_s=30)

        def progress_reported() -> tuple[bool, int]:
            progress = control.get("/v1/rebalance")[1]
            return progress["done"], sum(n["steered"] for n in progress["nodes"])
        # `done` can be true before the last worker's final count is in: wait for both together.
        await eventually(progress_reported, equals=(True, 2 * len(moved)), timeout_s=15,
                         what="rebalance progress to report done, every moved client steered")

        for client in fleet.clients:
            if client.room in moved:
                assert [n["reason"] for n in client.notices] == ["rebalance"]
                assert client.notices[0]["url"] == joiner.ws_url(0)
            else:
                assert client.notices == [] and client.workers_seen == [before.owner_id(client.room)]
            assert client.errors == [] and client.unexpected_closes == 0 and client.resolves == 0
        assert ring_of(control).epoch == after.epoch
    finally:
        await fleet.stop()
