"""A worker killed with SIGKILL leaves the ring; routing and its clients follow."""

import os
import signal

from chaos.cluster import http_json, wait_until
from chaos.fleet import Fleet
from tests.control.helpers import node_view, ring_of, route_via, wait_ring
from tests.wsclient import WsClient


async def test_sigkilled_worker_leaves_the_ring_and_its_clients_land_on_the_new_owner(
    start_node, start_control, start_router, redis_server
):
    # A long restart backoff keeps the killed worker dead for the whole test. Workers first, so the
    # control plane admits both in one epoch (no join-time rebalance moving the clients).
    node = start_node(2, "--restart-backoff-base-s", "60")
    control = start_control()
    before = wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    router = start_router("--redis", redis_server.url)
    survivor, victim = f"127.0.0.1:{node.port}", f"127.0.0.1:{node.port + 1}"
    rooms = [f"failover-{i}" for i in range(40)]
    victim_rooms = [room for room in rooms if before.owner_id(room) == victim]
    assert victim_rooms and len(victim_rooms) < len(rooms)

    fleet = Fleet(rooms, lambda room: before.route(room).url, route_via(router.url()))
    await fleet.start()
    try:
        await fleet.wait(fleet.all_joined, 20, "every client joined on its room's owner")
        os.kill(node.worker_pid(1), signal.SIGKILL)

        after = wait_ring(control, lambda r: victim not in r, "the killed worker to leave the ring")
        assert after.epoch > before.epoch and list(after.members) == [survivor]
        assert node_view(control, victim)["health"] == "dead"
        events = control.get("/v1/events")[1]["events"]
        assert any(e["kind"] == "dead" and e["node"] == victim for e in events)

        for room in victim_rooms:
            wait_until(lambda: http_json(router.url(f"/route?room={room}"))[1].get("node") == survivor, 10,
                       f"the route service to answer the new owner of {room}")

        def moved_and_rejoined() -> bool:
            return fleet.all_joined() and all(c.worker == survivor for c in fleet.clients)
        await fleet.wait(moved_and_rejoined, 30, "every client of the dead worker connected again on the survivor")
        for client in fleet.clients:
            assert client.errors == []
            assert client.unexpected_closes == (1 if client.room in victim_rooms else 0)
    finally:
        await fleet.stop()
    assert ring_of(control).epoch == after.epoch  # nothing flapped afterwards


def test_a_restarted_worker_rejoins_only_after_the_hold_down(start_node, start_control):
    # The supervisor restarts it after 4 s: longer than dead_after_s, so it is declared dead first.
    node = start_node(2, "--restart-backoff-base-s", "4", "--restart-reset-after-s", "1")
    control = start_control("--rejoin-hold-down-s", "4")
    before = wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    victim = f"127.0.0.1:{node.port + 1}"
    os.kill(node.worker_pid(1), signal.SIGKILL)
    wait_ring(control, lambda r: victim not in r, "the killed worker to leave the ring")

    back = wait_until(lambda: (lambda v: v if v.get("health") == "alive" else None)(node_view(control, victim)), 30,
                      "the restarted worker to heartbeat again")
    assert back["inRing"] is False and back["holdUntilMs"] > 0  # alive, but held out (anti-flap)
    after = wait_ring(control, lambda r: victim in r, "the worker to rejoin after its hold-down")
    assert after.epoch == before.epoch + 2
    events = sorted(control.get("/v1/events")[1]["events"], key=lambda e: e["seq"])
    returned = next(e for e in events if e["kind"] == "returned" and e["node"] == victim)
    rejoined = next(e for e in events if e["kind"] == "ring" and victim in e["detail"]["added"] and e["seq"] > returned["seq"])
    assert returned["detail"]["holdDownMs"] == 4000 and rejoined["detail"]["epoch"] == after.epoch


async def test_a_worker_stopped_with_sigterm_points_its_clients_at_the_new_owners_and_leaves_the_ring(
    start_node, start_control
):
    node = start_node(2, "--restart-backoff-base-s", "60", "--shutdown-window-s", "0.5")
    control = start_control()
    ring = wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    # The leaving worker computes its clients' targets from its own copy of the ring (polled).
    wait_until(lambda: http_json(node.http_url(1, "/ring"))[1].get("epoch") == ring.epoch, 15,
               "worker 1 to follow the published ring")
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
        after = wait_ring(control, lambda r: leaving not in r, "the stopped worker to leave the ring")
        assert list(after.members) == [staying] and after.epoch > ring.epoch
    finally:
        for client in clients:
            await client.close()
