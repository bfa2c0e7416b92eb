"""The SDK does not follow a `moved` hint back to a host that went silent, until a newer ring names it.

A worker's ring lags the control plane's detection of a dead or cut-off host by a few seconds; in that window
it keeps hinting the silent host as the owner. The worker here is a small aiohttp app speaking the frames a
worker sends (welcome, joined, moved, message) and answering /route; the silent host is a listening socket on
127.0.0.2 that never accepts, so a connect to it gets no answer at all (the kernel completes the TCP
handshake, nothing follows).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

from aiohttp import web

from chaos.cluster import free_port
from chaos.eventually import eventually
from router import client_core
from router.client import Client

ROOM = "lobby"
RING_EPOCH = 3


@contextlib.asynccontextmanager
async def worker_hinting_a_silent_host():
    """(client, sessions, silent_url): a Client of a one-worker fake cluster whose worker, after every join,
    hints the silent host as the room's owner (at RING_EPOCH), then sends one message."""
    silent = socket.socket()
    silent.bind(("127.0.0.2", 0))
    silent.listen(8)  # never accepted: connects to it are never answered
    silent_url = f"ws://127.0.0.2:{silent.getsockname()[1]}/ws"
    port = free_port()
    worker_url = f"ws://127.0.0.1:{port}/ws"
    sessions: list[web.WebSocketResponse] = []

    async def route(request: web.Request) -> web.Response:
        return web.json_response({"room": ROOM, "node": "a", "url": worker_url, "epoch": RING_EPOCH})

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sessions.append(ws)
        session = len(sessions)
        await ws.send_json({"type": "welcome", "protocol": 1, "connectionId": f"c{session}", "workerId": "a",
                            "limits": {}})
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "join":
                await ws.send_json({"type": "joined", "id": frame.get("id"), "room": ROOM, "seq": 0, "epoch": "E",
                                    "recovered": True})
                await ws.send_json({"type": "moved", "room": ROOM, "url": silent_url, "epoch": RING_EPOCH})
                await ws.send_json({"type": "message", "room": ROOM, "seq": 1, "epoch": "E",
                                    "text": f"served by session {session}"})
        return ws

    app = web.Application()
    app.router.add_get("/route", route)
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with Client(f"http://127.0.0.1:{port}", connect_timeout_s=0.5, ping_interval_s=None) as client:
            yield client, sessions, silent_url
    finally:
        silent.close()
        await runner.cleanup()


async def test_a_moved_hint_to_a_silent_host_is_not_followed_again_at_the_same_ring_epoch():
    async with worker_hinting_a_silent_host() as (client, sessions, silent_url):
        await client.join(ROOM)
        # Session 1 hints the silent host: followed (it could be the owner; the client cannot know yet); the
        # connect gets no answer, the client comes back through the route service to session 2, whose identical
        # hint is not followed: the message after it arrives on session 2, which the client keeps.
        message = await asyncio.wait_for(anext(aiter(client)), timeout=30)
        assert message["text"] == "served by session 2"
        assert len(sessions) == 2 and not sessions[1].closed and client.url is not None
        assert client.last_moved[ROOM]["url"] == silent_url


async def test_without_the_rule_the_client_goes_back_to_the_silent_host(monkeypatch):
    """What the rule prevents: with `host_unreachable` a no-op, the same stale hint is followed again."""
    monkeypatch.setattr(client_core.ClientCore, "host_unreachable", lambda self, url: None)
    async with worker_hinting_a_silent_host() as (client, sessions, _):
        await client.join(ROOM)
        await eventually(lambda: len(sessions) >= 3, timeout_s=30, what="a third session after two bounces")
        assert all(ws.closed for ws in sessions[:2])  # sessions 1 and 2 were left for the silent host
