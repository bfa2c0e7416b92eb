"""A verifying, resuming room member for delivery tests.

Owns what the delivery promise looks like from a client: keep the last
(seq, epoch) seen, rejoin with `since` after any disconnect (on any of the
given worker URLs), follow `reconnect` frames, and record every message so a
test can check it got each one exactly once and in order.

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
    urls: list[str]
    room: str
    reconnect_gate: asyncio.Event | None = None  # if given, a reader that lost its connection waits for it
    seqs: list[int] = field(default_factory=list)
    epoch: str | None = None
    last_seq: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
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
                ended, delay_s = await self._session(client, until_seq, deadline)
            finally:
                await client.close()
            if ended == "done":
                return
            self.lost.append(ended)
            self.disconnected.set()
            await asyncio.sleep(delay_s)
            if self.reconnect_gate is not None:
                await asyncio.wait_for(self.reconnect_gate.wait(), max(0.0, deadline - loop.time()))

    async def _session(self, client: WsClient, until_seq: int, deadline: float) -> tuple[str, float]:
        """One connection: join (with `since` once a position is known) and read; returns (how it ended, delay)."""
        join: dict = {"type": "join", "room": self.room}
        if self.epoch is not None:
            join["since"] = {"seq": self.last_seq, "epoch": self.epoch}
        loop = asyncio.get_running_loop()
        try:
            await client.send(join)
            while self.last_seq < until_seq:
                frame = await client.recv(max(0.1, deadline - loop.time()))
                kind = frame.get("type")
                if kind == "joined":
                    self.joins.append(frame)
                    if "since" in join:
                        self.rejoins.append(Rejoin(join["since"], frame))
                    if self.epoch is None:
                        self.epoch, self.last_seq = frame["epoch"], frame["seq"]
                    self.joined_once.set()
                elif kind == "message":
                    self._record(frame)
                elif kind == "reconnect":
                    return "reconnect", frame.get("delayMs", 0) / 1000
                elif kind == "error":
                    self.errors.append(frame)
                    if frame.get("code") in RETRY_CODES:
                        return frame["code"], 0.2
        except asyncio.TimeoutError:
            return "deadline", 0.0
        except (ConnectionError, aiohttp.ClientError, OSError):
            return "cut", 0.05
        return "done", 0.0

    def _record(self, frame: dict) -> None:
        seq, epoch = frame["seq"], frame["epoch"]
        if epoch != self.epoch:
            # A new stream (first message of a room joined empty, or the room's state was lost).
            self.epoch, self.last_seq = epoch, 0
        if seq <= self.last_seq:
            self.duplicates += 1
            return
        if seq != self.last_seq + 1:
            self.gaps.append((self.last_seq, seq))
        self.seqs.append(seq)
        self.last_seq = seq


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
