"""The in-process bus: the embedded single-worker mode with no Redis.

Owns per-room sequence numbers and delivery inside one process. Delivery is
deferred to the next event-loop turn so callers see the same asynchrony as
with Redis. It keeps no history and cannot reach another process.
"""

from __future__ import annotations

import asyncio
import secrets

from node.bus import Bus, BusMessage, Position


class MemoryBus(Bus):
    def __init__(self) -> None:
        super().__init__()
        self._epoch = secrets.token_hex(6)  # one epoch per process lifetime
        self._seq: dict[str, int] = {}
        self._rooms: set[str] = set()

    async def start(self) -> None:
        self._on_state(True)

    async def close(self) -> None:
        self._rooms.clear()

    async def publish(self, room: str, body: bytes) -> Position:
        seq = self._seq.get(room, 0) + 1
        self._seq[room] = seq
        if room in self._rooms:
            asyncio.get_running_loop().call_soon(self._deliver_if_subscribed, BusMessage(room, seq, self._epoch, body))
        return Position(seq, self._epoch)

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
