"""Small shared steps of the control plane tests: read the ring, wait for it, wait for an event,
wait for the leader to finish a tick, resolve a room.

Every wait is `chaos.eventually.eventually` (bounded, never blocking the event loop): the
control plane writes its state and its events asynchronously, so a test waits for the very
thing it then checks.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Callable

from chaos.cluster import ControlProcess
from chaos.eventually import eventually
from router.ring import Ring


def ring_of(control: ControlProcess) -> Ring:
    status, body = control.get("/v1/ring")
    assert status == 200, body
    return Ring.from_dict(body)


async def wait_ring(control: ControlProcess, predicate: Callable[[Ring], bool], what: str,
                    timeout_s: float = 45.0) -> Ring:
    """The published ring, once `predicate` holds for it."""
    def probe() -> Ring | None:
        ring = ring_of(control)
        return ring if predicate(ring) else None
    return await eventually(probe, what=what, timeout_s=timeout_s)


def events_of(control: ControlProcess, query: str = "") -> list[dict]:
    status, body = control.get("/v1/events" + query)
    assert status == 200, body
    return body["events"]


async def wait_event(control: ControlProcess, match: Callable[[dict], bool], what: str,
                     timeout_s: float = 15.0) -> dict:
    """The newest logged event `match` accepts, once there is one.

    The leader logs an event after the state change it describes (a ring event after the
    ring is published, a leader event after the lease is taken): a test that has seen the
    state waits for the event too, instead of reading the log once and hoping.
    """
    return await eventually(lambda: next((e for e in events_of(control) if match(e)), None),
                            what=what, timeout_s=timeout_s)


def ticks_of(control: ControlProcess) -> float:
    return control.metric("ringcast_control_ticks_total")


async def leader_caught_up(control: ControlProcess, timeout_s: float = 15.0) -> None:
    """Wait until the leader has completed the tick in progress now, if any, or a later one.

    Ticks run one at a time and count themselves after their last write, so the first tick
    to complete after this reads the counter is the one running now or a later one: once it
    has, everything the leader decided from what a test saw before calling this is in Redis.
    """
    start = ticks_of(control)
    await eventually(lambda: ticks_of(control) > start, what="the leader to complete a tick", timeout_s=timeout_s)


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
