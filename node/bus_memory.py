"""The in-process bus: the embedded single-worker mode with no Redis.

Owns per-room sequence numbers, bounded history and delivery inside one
process. Delivery is deferred to the next event-loop turn so callers see the
same asynchrony as with Redis. History keeps each room's policy size but
ignores its TTL (it lives as long as the process). Idempotency keys live in
a bounded dict: each expires after the window, and past `max_idempotency_keys`
the oldest is forgotten first (a retry of it would then publish again). It
cannot reach another process.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from typing import Callable

from node.bus import (
    DEFAULT_IDEMPOTENCY_WINDOW_S,
    LATEST,
    POSITION_ONLY,
    Bus,
    BusMessage,
    HistoryPage,
    Position,
    valid_idempotency_key,
)
from node.history import HistoryPolicy

DEFAULT_MAX_IDEMPOTENCY_KEYS = 100_000  # about 200 bytes each: ~20 MB at most


class MemoryBus(Bus):
    def __init__(
        self, policy_for: Callable[[str], HistoryPolicy] = lambda room: HistoryPolicy(0, 0),
        idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
        max_idempotency_keys: int = DEFAULT_MAX_IDEMPOTENCY_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._idempotency_window_s = idempotency_window_s
        self._max_idempotency_keys = max_idempotency_keys
        self._clock = clock
        # (room, key) -> (first position, expiry); insertion order is expiry order (one window for all)
        self._used_keys: collections.OrderedDict[tuple[str, str], tuple[Position, float]] = collections.OrderedDict()
        self._epoch = secrets.token_hex(6)  # one epoch per process lifetime
        self._policy_for = policy_for
        self._seq: dict[str, int] = {}
        self._history: dict[str, collections.deque[BusMessage]] = {}
        self._rooms: set[str] = set()

    async def start(self) -> None:
        self._on_state(True)

    async def close(self) -> None:
        self._rooms.clear()

    async def publish(self, room: str, body: bytes, idempotency_key: str | None = None) -> Position:
        if idempotency_key is not None:
            if not valid_idempotency_key(idempotency_key):
                raise ValueError("an idempotency key is 1..64 printable ASCII characters")
            now = self._clock()
            while self._used_keys and next(iter(self._used_keys.values()))[1] <= now:
                self._used_keys.popitem(last=False)
            first = self._used_keys.get((room, idempotency_key))
            if first is not None:
                return first[0]._replace(duplicate=True)
        position = self._publish(room, body)
        if idempotency_key is not None:
            self._used_keys[(room, idempotency_key)] = (position, now + self._idempotency_window_s)
            if len(self._used_keys) > self._max_idempotency_keys:
                self._used_keys.popitem(last=False)
        return position

    def _publish(self, room: str, body: bytes) -> Position:
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
