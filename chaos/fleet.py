"""A fleet of lightweight WebSocket clients that follow the cluster's steering.

Owns a bounded number of cheap clients (one shared aiohttp session, one task
each) that connect, join one room, and then behave like the SDK (each
drives a `router.client_core.ClientCore`, so frames and replies are the
SDK's own): on a `reconnect` notice they wait `delayMs` and move to its
`url` (asking `resolve` when it has none); when their socket drops without notice
(a worker was killed) they ask `resolve` where their room lives now and
retry with `router.backoff` (capped, jittered). `moved` hints are recorded
by the core but not followed: the tests count exactly the steering by
notices and `resolve`. Every notice, error frame, refused upgrade and
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

from router.backoff import BackoffPolicy
from router.client_core import ClientCore, Connected, Joined, Notice, Reconnect, RequestFailed

Resolve = Callable[[str], Awaitable[str]]  # room -> ws URL of its owner

RETRY = BackoffPolicy(base_s=0.1, factor=2.0, cap_s=1.0, jitter=0.5)  # after a refused or failed connect


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
                 connect_timeout_s: float = 10.0, backoff: BackoffPolicy = RETRY) -> None:
        self.clients = [FleetClient(i, room, initial_url(room)) for i, room in enumerate(rooms)]
        self.resolve = resolve
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff
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
        core = ClientCore(max_moved_follows=0)  # steered by `reconnect` notices and `resolve` only, as counted
        core.join(client.room)
        failures = 0
        while not self._stop.is_set():
            notice: Reconnect | None = None
            refused_rejoin = False
            # The gate covers the handshake and the join: at most `connect_concurrency` in flight.
            await gate.acquire()
            holding = True
            try:
                ws = await self._session.ws_connect(
                    client.url, timeout=aiohttp.ClientWSTimeout(ws_close=self.connect_timeout_s), autoping=True)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                gate.release()
                client.refused.append(f"{client.url}: {exc}")
                await asyncio.sleep(self.backoff.delay_s(failures))
                failures += 1
                client.url = await self._resolve(client)
                continue
            try:
                core.connection_opened(client.url)
                if client.room not in core.rooms:  # a join refused on an earlier connection
                    core.join(client.room)
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        continue
                    frame = orjson.loads(msg.data)
                    events = core.receive(frame)
                    if holding and frame.get("type") in ("joined", "error", "reconnect"):
                        gate.release()
                        holding = False
                    for event in events:
                        if isinstance(event, Connected):
                            client.worker = event.worker_id or ""
                            client.workers_seen.append(client.worker)
                        elif isinstance(event, Joined):
                            client.joined = True
                            client.joined_at = time.monotonic()
                            failures = 0
                        elif isinstance(event, (RequestFailed, Notice)) and frame.get("type") == "error":
                            client.errors.append(frame)
                        elif isinstance(event, Reconnect) and event.close_now:
                            refused_rejoin = True  # BUS_UNAVAILABLE on a re-join: back on a fresh connection
                        elif isinstance(event, Reconnect):
                            notice = event
                            client.notices.append(frame)
                    if notice is not None or refused_rejoin:
                        client.joined = False
                        break
                    for out in core.frames_to_send():
                        await ws.send_str(orjson.dumps(out).decode())
            finally:
                core.connection_lost()
                if holding:
                    gate.release()
                await ws.close()
            if self._stop.is_set():
                return
            client.joined = False
            if notice is not None:
                await asyncio.sleep(notice.delay_s or 0.0)
                client.url = notice.url or await self._resolve(client)
            elif refused_rejoin:
                await asyncio.sleep(self.backoff.delay_s(failures))
                failures += 1
            else:
                client.unexpected_closes += 1
                client.url = await self._resolve(client)

    async def _resolve(self, client: FleetClient) -> str:
        client.resolves += 1
        try:
            return await self.resolve(client.room)
        except Exception:  # noqa: BLE001 - the route may be briefly unknown; retry the old URL
            return client.url
