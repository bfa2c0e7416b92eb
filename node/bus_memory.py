"""The in-process bus: the embedded single-worker mode with no Redis.

Owns per-room sequence numbers, bounded history and delivery inside one
process. Delivery is deferred to the next event-loop turn so callers see the
same asynchrony as with Redis. History keeps each room's policy size but
ignores its TTL (it lives as long as the process). It cannot reach another
process.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from typing import Callable

from node.bus import LATEST, POSITION_ONLY, Bus, BusMessage, HistoryPage, Position
from node.history import HistoryPolicy


class MemoryBus(Bus):
    def __init__(self, policy_for: Callable[[str], HistoryPolicy] = lambda room: HistoryPolicy(0, 0)) -> None:
        super().__init__()
        self._epoch = secrets.token_hex(6)  # one epoch per process lifetime
        self._policy_for = policy_for
        self._seq: dict[str, int] = {}
        self._history: dict[str, collections.deque[BusMessage]] = {}
        self._rooms: set[str] = set()

    async def start(self) -> None:
        self._on_state(True)

    async def close(self) -> None:
        self._rooms.clear()

    async def publish(self, room: str, body: bytes) -> Position:
        seq = self._seq.get(room, 0) + 1
        self._seq[room] = seq
        message = BusMessage(room, seq, self._epoch, body)
        size = self._policy_for(room).size
        if size > 0:
            self._history.setdefault(room, collections.deque(maxlen=size)).append(message)
        if room in self._rooms:
            asyncio.get_running_loop().call_soon(self._deliver_if_subscribed, message)
        return Position(seq, self._epoch)

    async def read_history(self, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        seq = self._seq.get(room, 0)
        epoch = self._epoch if seq else ""
        kept = list(self._history.get(room, ()))
        if since_seq == POSITION_ONLY:
            messages: list[BusMessage] = []
        elif since_seq == LATEST:
            messages = kept[-limit:] if limit > 0 else []
        else:
            start = since_seq if since_epoch == epoch else 0
            messages = [m for m in kept if m.seq > start][:limit]
        return HistoryPage(seq, epoch, messages)

    def history_policy(self, room: str) -> HistoryPolicy:
        return self._policy_for(room)

    def _deliver_if_subscribed(self, message: BusMessage) -> None:
        if message.room in self._rooms:
            self._deliver(message)

    async def subscribe(self, room: str) -> None:
        self._rooms.add(room)

    def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)

    @property
    def connected(self) -> bool:
        return True

    @property
    def subscribed_rooms(self) -> frozenset[str]:
        return frozenset(self._rooms)
