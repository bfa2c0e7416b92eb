"""A worker killed with SIGKILL leaves the ring; routing and its clients follow."""

import os
import signal

from chaos.cluster import http_json
from chaos.eventually import eventually
from chaos.fleet import Fleet
from tests.control.helpers import events_of, node_view, ring_of, route_via, wait_event, wait_ring
from tests.wsclient import WsClient


async def test_sigkilled_worker_leaves_the_ring_and_its_clients_land_on_the_new_owner(
    start_node, start_control, start_router, redis_server
):
    # A long restart backoff keeps the killed worker dead for the whole test. Workers first, so the
    # control plane admits both in one epoch (no join-time rebalance moving the clients).
    node = start_node(2, "--restart-backoff-base-s", "60")
    control = start_control()
    before = await wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    router = start_router("--redis", redis_server.url)
    survivor, victim = f"127.0.0.1:{node.port}", f"127.0.0.1:{node.port + 1}"
    rooms = [f"failover-{i}" for i in range(40)]
    victim_rooms = [room for room in rooms if before.owner_id(room) == victim]
    assert victim_rooms and len(victim_rooms) < len(rooms)

    fleet = Fleet(rooms, lambda room: before.route(room).url, route_via(router.url()))
    await fleet.start()
    try:
        await eventually(fleet.all_joined, what="every client joined on its room's owner", timeout_s=20)
        os.kill(node.worker_pid(1), signal.SIGKILL)

        after = await wait_ring(control, lambda r: victim not in r, "the killed worker to leave the ring")
        assert after.epoch > before.epoch and list(after.members) == [survivor]
        assert node_view(control, victim)["health"] == "dead"
        await wait_event(control, lambda e: e["kind"] == "dead" and e["node"] == victim, "the dead event")

        for room in victim_rooms:
            await eventually(lambda: http_json(router.url(f"/route?room={room}"))[1].get("node"), equals=survivor,
                             what=f"the route service to answer the new owner of {room}")

        def moved_and_rejoined() -> bool:
            return fleet.all_joined() and all(c.worker == survivor for c in fleet.clients)
        await eventually(moved_and_rejoined, timeout_s=30,
                         what="every client of the dead worker connected again on the survivor")
        for client in fleet.clients:
            assert client.errors == []
            assert client.unexpected_closes == (1 if client.room in victim_rooms else 0)
    finally:
        await fleet.stop()
    assert ring_of(control).epoch == after.epoch  # nothing flapped afterwards


async def test_a_restarted_worker_rejoins_only_after_the_hold_down(start_node, start_control):
    # The supervisor restarts it after 6 s: well past dead_after_s (3 s), so it is declared dead first.
    node = start_node(2, "--restart-backoff-base-s", "6", "--restart-reset-after-s", "1")
    control = start_control("--rejoin-hold-down-s", "4")
    before = await wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    victim = f"127.0.0.1:{node.port + 1}"
    os.kill(node.worker_pid(1), signal.SIGKILL)
    await wait_ring(control, lambda r: victim not in r, "the killed worker to leave the ring")

    after = await wait_ring(control, lambda r: victim in r, "the restarted worker to rejoin after its hold-down")
    assert after.epoch == before.epoch + 2  # out once, back once: no flapping in between
    # The ring event is logged after the ring is published: wait for it, not just for the ring.
    rejoined = await wait_event(control, lambda e: e["kind"] == "ring" and e["detail"]["epoch"] == after.epoch,
                                "the ring event of the rejoin")
    returned = next(e for e in events_of(control) if e["kind"] == "returned" and e["node"] == victim)
    assert returned["detail"]["holdDownMs"] == 4000 and returned["seq"] < rejoined["seq"]
    assert rejoined["detail"]["added"] == [victim]
    # Held out until the end of its hold-down (Redis' clock; the leader logs on the same host's clock).
    view = node_view(control, victim)
    assert view["health"] == "alive" and view["holdUntilMs"] > 0 and rejoined["tsMs"] >= view["holdUntilMs"]


async def test_a_worker_stopped_with_sigterm_points_its_clients_at_the_new_owners_and_leaves_the_ring(
    start_node, start_control
):
    node = start_node(2, "--restart-backoff-base-s", "60", "--shutdown-window-s", "0.5")
    control = start_control()
    ring = await wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    # The leaving worker computes its clients' targets from its own copy of the ring (polled).
    await eventually(lambda: http_json(node.http_url(1, "/ring"))[1].get("epoch"), equals=ring.epoch, timeout_s=15,
                     what="worker 1 to follow the published ring")
    leaving, staying = f"127.0.0.1:{node.port + 1}", f"127.0.0.1:{node.port}"
    rooms = [f"sigterm-{i}" for i in range(10)]
    clients = [await WsClient.connect(node.ws_url(1)) for _ in rooms]
    try:
        for client, room in zip(clients, rooms):
            await client.join(room)
        os.kill(node.worker_pid(1), signal.SIGTERM)
        for client in clients:
            notice = await client.expect("reconnect", timeout_s=15)
            assert notice["reason"] == "shutdown" and notice["url"] == node.ws_url(0)
        after = await wait_ring(control, lambda r: leaving not in r, "the stopped worker to leave the ring")
        assert list(after.members) == [staying] and after.epoch > ring.epoch
    finally:
        for client in clients:
            await client.close()
