"""A verifying, resuming room member for delivery tests.

Owns what the delivery promise looks like from a client: keep the last
(seq, epoch) seen, rejoin with `since` after any disconnect (on any of the
given worker URLs), follow `reconnect` frames, and record every message so a
test can check it got each one exactly once and in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from tests.wsclient import WsClient


@dataclass
class ResumingReader:
    urls: list[str]
    room: str
    seqs: list[int] = field(default_factory=list)
    epoch: str | None = None
    last_seq: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    joins: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    reconnects: int = 0
    joined_once: asyncio.Event = field(default_factory=asyncio.Event)

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
            try:
                delay_s = await self._session(client, until_seq, deadline)
            finally:
                await client.close()
            self.reconnects += 1
            await asyncio.sleep(delay_s)

    async def _session(self, client: WsClient, until_seq: int, deadline: float) -> float:
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
                    if self.epoch is None:
                        self.epoch, self.last_seq = frame["epoch"], frame["seq"]
                    self.joined_once.set()
                elif kind == "message":
                    self._record(frame)
                elif kind == "reconnect":
                    return frame.get("delayMs", 0) / 1000
                elif kind == "error":
                    self.errors.append(frame)
                    if frame.get("code") in ("BUS_UNAVAILABLE", "PUBLISH_UNCONFIRMED"):
                        return 0.2
        except (ConnectionError, aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return 0.05
        return 0.0

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


async def publish_numbered(client: WsClient, room: str, count: int, pause_s: float, started: asyncio.Event | None = None,
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
            assert frame["code"] in ("BUS_UNAVAILABLE", "PUBLISH_UNCONFIRMED"), frame
            await asyncio.sleep(0.2)
        if progress is not None:
            progress.append(n)
        if pause_s:
            await asyncio.sleep(pause_s)
    return acked
