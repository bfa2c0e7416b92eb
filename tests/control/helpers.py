"""Small shared steps of the control plane tests: read the ring, wait for it, resolve a room."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from chaos.cluster import ControlProcess, wait_until
from router.ring import Ring


def ring_of(control: ControlProcess) -> Ring:
    status, body = control.get("/v1/ring")
    assert status == 200, body
    return Ring.from_dict(body)


def wait_ring(control: ControlProcess, predicate, what: str, timeout_s: float = 45.0) -> Ring:
    return wait_until(lambda: (lambda ring: ring if predicate(ring) else None)(ring_of(control)), timeout_s, what)


def node_view(control: ControlProcess, node_id: str) -> dict:
    status, body = control.get("/v1/nodes")
    assert status == 200, body
    return {n["id"]: n for n in body["nodes"]}.get(node_id, {})


def route_via(router_url: str):
    """An async resolver asking the route service (GET /route) where a room lives."""
    async def resolve(room: str) -> str:
        def ask() -> str:
            with urllib.request.urlopen(f"{router_url}/route?room={room}", timeout=2) as response:
                return json.loads(response.read())["url"]
        return await asyncio.to_thread(ask)
    return resolve
