"""The message bus interface: how a worker publishes to a room and hears it.

Owns the contract every bus implementation keeps (`bus_memory` for the
single-process embedded mode, `bus_redis` for a cluster over one Redis):

- `publish(room, body)` assigns the room's next stream position atomically
  with delivery, so every subscriber sees one order; it returns the position
  or raises `BusUnavailable` within the configured timeout, never hangs.
- `subscribe(room)` returns once messages published afterwards will reach
  this worker; `unsubscribe(room)` stops them. A bus carries only the rooms
  subscribed here (no global channel) and restores them after a reconnect.
- Received messages go to the `deliver` callback, one call per message, on
  the event loop thread, in channel order.

Workers, the route service and the control plane depend on this interface,
never on Redis directly for room traffic.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable


class BusUnavailable(Exception):
    """The bus cannot be reached now; nothing was published. Retry later."""


@dataclass(frozen=True, slots=True)
class Position:
    seq: int  # increases by one per message in the room
    epoch: str  # changes when the room's stream state was lost


@dataclass(frozen=True, slots=True)
class BusMessage:
    room: str
    seq: int
    epoch: str
    body: bytes  # node.envelope bytes, exactly as published


DeliverFn = Callable[[BusMessage], None]
StateFn = Callable[[bool], None]  # called with True when the bus (re)connects, False when it is lost


class Bus(abc.ABC):
    """One worker's connection to the room channels."""

    def __init__(self) -> None:
        self._deliver: DeliverFn = lambda message: None
        self._on_state: StateFn = lambda connected: None

    def set_handlers(self, deliver: DeliverFn, on_state: StateFn | None = None) -> None:
        self._deliver = deliver
        if on_state is not None:
            self._on_state = on_state

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; a bus that cannot connect yet keeps trying in the background."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Drop every subscription and connection."""

    @abc.abstractmethod
    async def publish(self, room: str, body: bytes) -> Position:
        """Append to the room's stream and deliver to its subscribers."""

    @abc.abstractmethod
    async def subscribe(self, room: str) -> None:
        """Start receiving the room; returns once the subscription is live."""

    @abc.abstractmethod
    def unsubscribe(self, room: str) -> None:
        """Stop receiving the room (takes effect asynchronously)."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether the bus can publish and receive right now."""

    @property
    @abc.abstractmethod
    def subscribed_rooms(self) -> frozenset[str]:
        """The rooms this bus is (or is about to be) subscribed to."""
