"""Drain with a few hundred connected clients, then undrain."""

import aiohttp
import pytest

from chaos.cluster import http_json
from chaos.eventually import eventually
from chaos.fleet import Fleet
from tests.control.helpers import node_view, ring_of, wait_ring

CLIENTS = 300
ROOMS = 30


async def no_route(room: str) -> str:
    raise AssertionError("a drain notice must carry the new owner's url; this client had to ask")


async def test_drain_steers_every_client_to_its_rooms_new_owner_then_undrain(start_node, start_control):
    # Workers first: the control plane then admits them in one epoch, so no join-time rebalance
    # moves these clients before the drain does.
    node = start_node(3)
    control = start_control()
    await wait_ring(control, lambda r: len(r) == 3, "three workers in the ring")
    drained_id = f"127.0.0.1:{node.port}"
    rooms = [f"drain-{i % ROOMS}" for i in range(CLIENTS)]
    # Everyone starts on worker 0, owner or not: the drain must move all of them.
    fleet = Fleet(rooms, lambda room: node.ws_url(0), resolve=no_route)
    await fleet.start()
    try:
        await eventually(fleet.all_joined, what="every client joined on worker 0", timeout_s=60)
        await eventually(lambda: node_view(control, drained_id)["connections"], equals=CLIENTS,
                         what="the heartbeat to count them")

        status, answer = control.call("POST", f"/v1/nodes/{drained_id}/drain", {"windowS": 2})
        assert status == 202, answer
        ring = ring_of(control)
        assert drained_id not in ring and ring.epoch >= answer["ringEpoch"]

        def drained_view() -> dict | None:
            view = node_view(control, drained_id)
            return view if view["state"] == "drained" else None
        # State, connections and progress come from one heartbeat: judge the one that said drained.
        view = await eventually(drained_view, what="worker 0 to report drained", timeout_s=60)
        assert view["connections"] == 0 and view["inRing"] is False
        assert view["steering"]["kind"] == "drain" and view["steering"]["steered"] == CLIENTS

        def all_moved() -> bool:
            return fleet.all_joined() and all(c.worker != drained_id for c in fleet.clients)
        await eventually(all_moved, what="every client connected again on another worker", timeout_s=60)
        for client in fleet.clients:
            owner = ring.route(client.room)
            assert [n["reason"] for n in client.notices] == ["drain"]
            assert client.notices[0]["url"] == owner.url and client.worker == owner.id
            assert 0 <= client.notices[0]["delayMs"]
            assert client.errors == [] and client.refused == [] and client.unexpected_closes == 0
            assert client.resolves == 0

        status, ready = http_json(node.http_url(0, "/readyz"))
        assert status == 503 and ready["state"] == "drained"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(node.ws_url(0))
            assert refused.value.status == 503
            async with session.get(node.ws_url(0).replace("ws://", "http://"),
                                   headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                            "Sec-WebSocket-Version": "13"}) as response:
                assert response.status == 503 and (await response.json())["error"] == "NOT_ACCEPTING"

        status, answer = control.call("POST", f"/v1/nodes/{drained_id}/undrain")
        assert status == 202, answer
        back = await wait_ring(control, lambda r: drained_id in r, "worker 0 back in the ring")
        assert back.epoch > ring.epoch
        assert http_json(node.http_url(0, "/readyz"))[0] == 200
        kinds = [e["kind"] for e in control.get("/v1/events")[1]["events"]]
        assert "drain" in kinds and "undrain" in kinds
    finally:
        await fleet.stop()
