"""A verifying, resuming room member for delivery tests.

Owns what the delivery promise looks like from a client: the SDK's core
(`router.client_core`) keeps the last (seq, epoch) seen and rejoins with
`since` after any disconnect (on any of the given worker URLs); the reader
follows `reconnect` frames and records every message so a test can check it
got each one exactly once and in order.

It also keeps the evidence that a resume really happened, so a test can tell
"nothing was lost because the resume worked" from "nothing was lost because
nothing happened": why each connection ended early (`lost`), how many new
connections followed a lost one (`reconnects`), and every join sent with
`since` together with the server's `joined` answer (`rejoins`).

`publish_numbered` is the matching publisher; `bus_reconnected` waits for a
worker's bus after a Redis fault.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from chaos.eventually import eventually
from router.client_core import (
    ClientCore,
    Duplicate,
    Event,
    Gap,
    Joined,
    Message,
    Notice,
    OutOfOrder,
    Reconnect,
    RequestFailed,
)
from tests.wsclient import WsClient

RETRY_CODES = ("BUS_UNAVAILABLE", "PUBLISH_UNCONFIRMED")


@dataclass(frozen=True)
class Rejoin:
    """One join sent with `since` on a new connection, and the server's `joined` answer."""

    since: dict  # {"seq", "epoch"}: the last position this reader had seen
    joined: dict  # the answer; `recovered`/`reason` say whether the replay was complete

    @property
    def recovered(self) -> bool | None:
        return self.joined.get("recovered")  # None: the server treated it as a plain join


@dataclass
class ResumingReader:
    """A room member driving the SDK's core (`router.client_core`) over a raw test socket.

    The core owns the position, the `since` of every re-join, duplicate dropping and gap
    repair; the reader records what the core reported, so the counters say what really
    arrived: `duplicates` are repeats the server sent (dropped before `seqs`), `gaps` are
    jumps the server sent (repaired by re-joining with `since`, never filled in by guesswork).
    """

    urls: list[str]
    room: str
    reconnect_gate: asyncio.Event | None = None  # if given, a reader that lost its connection waits for it
    seqs: list[int] = field(default_factory=list)  # messages handed on, in order
    duplicates: int = 0
    out_of_order: int = 0  # messages of an epoch the stream had already left
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (last seq, seq received) of every jump
    joins: list[dict] = field(default_factory=list)  # every `joined` answer, resuming or not
    rejoins: list[Rejoin] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    # Why each connection ended before the reader was done: "cut" (the socket closed under it),
    # "reconnect" (the server's notice), a retryable error code, or "deadline".
    lost: list[str] = field(default_factory=list)
    connections: int = 0  # WebSockets opened
    reconnects: int = 0  # connections opened after a lost one (never the first, never a normal end)
    joined_once: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)  # set when a connection is first lost
    core: ClientCore = field(default_factory=ClientCore)

    def __post_init__(self) -> None:
        self.core.join(self.room)

    @property
    def epoch(self) -> str | None:
        position = self.core.position(self.room)
        return position.epoch if position is not None else None

    @property
    def last_seq(self) -> int:
        position = self.core.position(self.room)
        return position.seq if position is not None else 0

    async def run(self, until_seq: int, deadline_s: float) -> None:
        """Read until `until_seq` is seen (in the current epoch) or the deadline passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        attempt = 0
        while loop.time() < deadline and self.last_seq < until_seq:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                client = await WsClient.connect(url)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError):
                await asyncio.sleep(0.1)
                continue
            if self.connections:
                self.reconnects += 1
            self.connections += 1
            try:
                ended, delay_s = await self._session(client, url, until_seq, deadline)
            finally:
                self.core.connection_lost()
                await client.close()
            if ended == "done":
                return
            self.lost.append(ended)
            self.disconnected.set()
            await asyncio.sleep(delay_s)
            if self.reconnect_gate is not None:
                await asyncio.wait_for(self.reconnect_gate.wait(), max(0.0, deadline - loop.time()))

    async def _session(self, client: WsClient, url: str, until_seq: int, deadline: float) -> tuple[str, float]:
        """One connection: the core joins (with `since` once a position is known); returns (how it ended, delay)."""
        loop = asyncio.get_running_loop()
        self.core.connection_opened(url)
        self.core.receive(client.welcome)
        try:
            while True:
                for frame in self.core.frames_to_send():
                    await client.send(frame)
                if self.last_seq >= until_seq:
                    return "done", 0.0
                frame = await client.recv(max(0.1, deadline - loop.time()))
                for event in self.core.receive(frame):
                    ended = self._record(event)
                    if ended is not None:
                        return ended
        except asyncio.TimeoutError:
            return "deadline", 0.0
        except (ConnectionError, aiohttp.ClientError, OSError):
            return "cut", 0.05

    def _record(self, event: Event) -> tuple[str, float] | None:
        """Note one event of the core; (how the connection ends, delay) when it must end."""
        if isinstance(event, Message):
            self.seqs.append(event.frame["seq"])
        elif isinstance(event, Duplicate):
            self.duplicates += 1
        elif isinstance(event, OutOfOrder):
            self.out_of_order += 1
        elif isinstance(event, Gap):
            self.gaps.append((event.last.seq, event.frame["seq"]))
        elif isinstance(event, Joined):
            self.joins.append(event.frame)
            if event.since is not None:
                self.rejoins.append(Rejoin(event.since.as_since(), event.frame))
            self.joined_once.set()
        elif isinstance(event, (RequestFailed, Notice)) and event.frame.get("type") == "error":
            self.errors.append(event.frame)
            if event.frame.get("code") in RETRY_CODES:
                return event.frame["code"], 0.2
        elif isinstance(event, Reconnect):
            return ("reconnect", event.delay_s or 0.0) if not event.close_now else (event.reason, 0.2)
        return None


async def publish_numbered(client: WsClient, room: str, count: int, pause_s: float,
                           progress: list[int] | None = None) -> list[int]:
    """Publish `count` messages, each acknowledged before the next, retrying on BUS_UNAVAILABLE; returns their seqs."""
    acked: list[int] = []
    for n in range(count):
        while True:
            await client.send({"type": "message", "room": room, "data": {"n": n}, "id": n})
            frame = await client.expect_any(("ack", "error"))
            if frame["type"] == "ack":
                acked.append(frame["seq"])
                break
            assert frame["code"] in RETRY_CODES, frame
            await asyncio.sleep(0.2)
        if progress is not None:
            progress.append(n)
        if pause_s:
            await asyncio.sleep(pause_s)
    return acked


async def bus_reconnected(node, index: int, connections_before: float) -> None:
    """Wait until worker `index`'s bus subscriber connected again after `connections_before` was read.

    `ringcast_bus_connected` alone is no proof: right after a Redis restart it
    still reads 1 until the worker notices the old connection is gone.
    """
    def reconnected() -> bool:
        return (node.metric(index, "ringcast_bus_reconnects_total") > connections_before
                and node.metric(index, "ringcast_bus_connected") == 1.0)
    await eventually(reconnected, what=f"worker {index}'s bus to reconnect", timeout_s=30)
