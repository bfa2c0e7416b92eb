"""A fleet of lightweight WebSocket clients that follow the cluster's steering.

Owns a bounded number of cheap clients (one shared aiohttp session, one task
each) that connect, join one room, and then behave like a well-written SDK
client: on a `reconnect` notice they wait `delayMs` and move to its `url`
(asking `resolve` when it has none); when their socket drops without notice
(a worker was killed) they ask `resolve` where their room lives now and
retry with a capped backoff. Every notice, error frame, refused upgrade and
unexpected close is recorded per client, for the drain/failover tests and
the control plane benchmark. It must not decide where rooms live: `resolve`
does (the route service, or the control plane's ring).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
import orjson

Resolve = Callable[[str], Awaitable[str]]  # room -> ws URL of its owner

RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0


@dataclass
class FleetClient:
    index: int
    room: str
    url: str
    worker: str = ""  # workerId from the latest welcome
    joined: bool = False
    joined_at: float = 0.0  # monotonic time of the latest joined
    notices: list[dict] = field(default_factory=list)  # reconnect frames received
    errors: list[dict] = field(default_factory=list)  # error frames received
    refused: list[str] = field(default_factory=list)  # failed connection attempts
    unexpected_closes: int = 0  # sockets that closed without a reconnect notice first
    resolves: int = 0  # times it had to ask `resolve` where its room lives
    workers_seen: list[str] = field(default_factory=list)


class Fleet:
    def __init__(self, rooms: list[str], initial_url: Callable[[str], str], resolve: Resolve,
                 connect_timeout_s: float = 10.0) -> None:
        self.clients = [FleetClient(i, room, initial_url(room)) for i, room in enumerate(rooms)]
        self.resolve = resolve
        self.connect_timeout_s = connect_timeout_s
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self, connect_concurrency: int = 4) -> None:
        """Start every client, at most `connect_concurrency` handshakes at a time (no self-inflicted storm)."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        gate = asyncio.Semaphore(connect_concurrency)
        self._tasks = [asyncio.create_task(self._life(client, gate)) for client in self.clients]

    def all_joined(self) -> bool:
        return all(client.joined for client in self.clients)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _life(self, client: FleetClient, gate: asyncio.Semaphore) -> None:
        assert self._session is not None
        failures = 0
        while not self._stop.is_set():
            notice = None
            # The gate covers the handshake and the join: at most `connect_concurrency` in flight.
            await gate.acquire()
            holding = True
            try:
                ws = await self._session.ws_connect(
                    client.url, timeout=aiohttp.ClientWSTimeout(ws_close=self.connect_timeout_s), autoping=True)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                gate.release()
                client.refused.append(f"{client.url}: {exc}")
                failures += 1
                await asyncio.sleep(min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(failures, 10)))
                client.url = await self._resolve(client)
                continue
            try:
                await ws.send_str(orjson.dumps({"type": "join", "room": client.room}).decode())
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        continue
                    frame = orjson.loads(msg.data)
                    kind = frame.get("type")
                    if holding and kind in ("joined", "error", "reconnect"):
                        gate.release()
                        holding = False
                    if kind == "welcome":
                        client.worker = frame["workerId"]
                        client.workers_seen.append(client.worker)
                    elif kind == "joined":
                        client.joined = True
                        client.joined_at = time.monotonic()
                        failures = 0
                    elif kind == "error":
                        client.errors.append(frame)
                    elif kind == "reconnect":
                        notice = frame
                        client.notices.append(frame)
                        client.joined = False
                        break
            finally:
                if holding:
                    gate.release()
                await ws.close()
            if self._stop.is_set():
                return
            client.joined = False
            if notice is not None:
                await asyncio.sleep(notice.get("delayMs", 0) / 1000)
                client.url = notice.get("url") or await self._resolve(client)
            else:
                client.unexpected_closes += 1
                client.url = await self._resolve(client)

    async def _resolve(self, client: FleetClient) -> str:
        client.resolves += 1
        try:
            return await self.resolve(client.room)
        except Exception:  # noqa: BLE001 - the route may be briefly unknown; retry the old URL
            return client.url
