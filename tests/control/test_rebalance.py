"""Rebalance after a worker joins: only rooms whose owner changed move, to their new owner."""

import pytest

from chaos.cluster import wait_until
from chaos.fleet import Fleet
from tests.control.helpers import ring_of, wait_ring

ROOMS = [f"rebalance-{i}" for i in range(40)]


async def no_route(room: str) -> str:
    raise AssertionError("a rebalance notice must carry the new owner's url")


@pytest.mark.parametrize("automatic", [True, False], ids=["after-join", "on-demand"])
async def test_rebalance_moves_only_rooms_whose_owner_changed(start_node, start_control, automatic):
    start_node(2)
    control = start_control(*([] if automatic else ["--no-auto-rebalance"]))
    before = wait_ring(control, lambda r: len(r) == 2, "the first two workers in the ring")
    fleet = Fleet(ROOMS * 2, lambda room: before.route(room).url, resolve=no_route)  # two members per room
    await fleet.start()
    try:
        await fleet.wait(fleet.all_joined, 30, "every client joined on its room's owner")
        joiner = start_node(1)
        joiner_id = f"127.0.0.1:{joiner.port}"
        after = wait_ring(control, lambda r: joiner_id in r, "the new worker in the ring")
        moved = {room for room in ROOMS if after.owner_id(room) != before.owner_id(room)}
        assert moved and moved != set(ROOMS)
        assert all(after.owner_id(room) == joiner_id for room in moved)  # consistent hashing: only to the joiner

        if not automatic:
            status, answer = control.call("POST", "/v1/rebalance")
            assert status == 202 and answer["ringEpoch"] == after.epoch, answer

        def moved_rooms_on_new_owner() -> bool:
            return fleet.all_joined() and all(c.worker == joiner_id for c in fleet.clients if c.room in moved)
        await fleet.wait(moved_rooms_on_new_owner, 30, "members of moved rooms on the new owner")
        wait_until(lambda: control.get("/v1/rebalance")[1]["done"], 10, "rebalance progress to report done")
        steered = sum(n["steered"] for n in control.get("/v1/rebalance")[1]["nodes"])
        assert steered == 2 * len(moved)

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
