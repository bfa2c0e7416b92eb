"""The drill's client population: N resuming members in R rooms and P publishers, spread over worker URLs.

Owns creating the population (member i joins room i mod R through worker
URL i mod W), bringing it up in a bounded ramp, switching publishing on and
off, waiting for the stream to settle, and counting what each member is
still missing of what was acked in its room. It must not inject faults or
judge results.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass

import aiohttp

from chaos.eventually import Timeout, eventually
from chaos.drill.client import DRILL_BACKOFF, Ledger, Publisher, RoomMember
from router.backoff import BackoffPolicy

CONNECT_CONCURRENCY = 200  # sockets opened at once while ramping up; more only queues in the accept backlog


@dataclass(frozen=True)
class PopulationSize:
    clients: int  # verifying room members
    rooms: int
    publishers: int
    publish_rate_per_s: float  # all publishers together, messages per second
    payload_bytes: int = 0  # padding added to each message's data


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-files limit toward `wanted` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class Population:
    def __init__(self, size: PopulationSize, urls: list[str], room_prefix: str, ledger: Ledger,
                 backoff: BackoffPolicy = DRILL_BACKOFF, liveness_s: float | None = None) -> None:
        self.size = size
        self.urls = urls
        self.ledger = ledger
        self.rooms = [f"{room_prefix}{i}" for i in range(size.rooms)]
        self.session: aiohttp.ClientSession | None = None
        self.members: list[RoomMember] = []
        self.publishers: list[Publisher] = []
        self._tasks: list[asyncio.Task] = []
        self.backoff = backoff
        self.liveness_s = liveness_s  # client-side liveness (chaos/drill/client.py LIVENESS_PING_AFTER_S), or None

    async def start(self, timeout_s: float) -> None:
        """Connect every member and publisher and wait until all are joined (publishing still off)."""
        raise_fd_limit(self.size.clients + self.size.publishers + 1024)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5),
        )
        size = self.size
        self.members = [
            RoomMember(self.ledger, self.session, self.urls, i, self.rooms[i % size.rooms], self.backoff,
                       self.liveness_s)
            for i in range(size.clients)
        ]
        per_publisher = size.publish_rate_per_s / size.publishers
        self.publishers = [
            Publisher(self.ledger, self.session, self.urls, i, f"p{i}", self.rooms[i::size.publishers] or [self.rooms[0]],
                      per_publisher, size.payload_bytes, self.backoff, self.liveness_s)
            for i in range(size.publishers)
        ]
        ramp = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def ramped(client, joined: asyncio.Event) -> None:
            async with ramp:
                task = asyncio.create_task(client.run())
                self._tasks.append(task)
                waiter = asyncio.create_task(joined.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(ramped(m, m.joined_once) for m in self.members),
                                 *(ramped(p, p.ready) for p in self.publishers))
            await asyncio.gather(*(m.joined_once.wait() for m in self.members),
                                 *(p.ready.wait() for p in self.publishers))

    def publish(self, on: bool) -> None:
        for publisher in self.publishers:
            if on:
                publisher.publishing.set()
            else:
                publisher.publishing.clear()

    def all_connected(self) -> bool:
        return all(m.connected for m in self.members)

    def missing(self) -> int:
        """Acked (room, epoch, seq) a member of that room has not accepted, summed over members."""
        acked = self.ledger.acked
        missing = 0
        for member in self.members:
            stream = member.stream
            for epoch, seq in acked.get(member.room, {}):
                if not stream.has(epoch, seq):
                    missing += 1
        return missing

    def missing_detail(self, limit: int = 20) -> list[dict]:
        out = []
        for index, member in enumerate(self.members):
            lost = [pos for pos in self.ledger.acked.get(member.room, {}) if not member.stream.has(*pos)]
            if lost:
                out.append({"member": index, "room": member.room, "missing": len(lost), "first": sorted(lost)[:5],
                            "accepted": {e: iv[-3:] for e, iv in member.stream.intervals.items()}})
            if len(out) >= limit:
                break
        return out

    async def settle(self, timeout_s: float) -> None:
        """Wait (publishing off) until no publish is in flight and every member is connected and misses no
        acked message, or `timeout_s`.

        A publish sent just before publishing stopped is acked later: until
        every publisher is parked, "nothing missing" may only mean "not acked
        yet". Running out of time is not an error here: what is still
        missing then is reported as lost, and judged.
        """
        async def settled() -> bool:  # async: read on the loop the clients update it from
            publishers_idle = all(p.parked or not p.connected for p in self.publishers)
            return publishers_idle and self.all_connected() and self.missing() == 0

        try:
            await eventually(settled, what="every member caught up", timeout_s=timeout_s, interval_s=0.5)
        except Timeout:
            pass

    def crashed_clients(self) -> list[str]:
        """Client tasks that died of an exception (a bug in the drill's clients, not a server failure)."""
        return [repr(task.exception()) for task in self._tasks
                if task.done() and not task.cancelled() and task.exception() is not None]

    def drop_all(self) -> None:
        """Every member's socket dropped at once, client side, without a close frame."""
        for member in self.members:
            member.abort()

    async def close(self) -> None:
        for client in [*self.members, *self.publishers]:
            client.stopping = True
        await asyncio.gather(*(c.stop() for c in [*self.members, *self.publishers]), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
