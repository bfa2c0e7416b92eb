"""The message bus interface: how a worker publishes to a room and hears it.

Owns the contract every bus implementation keeps (`bus_memory` for the
single-process embedded mode, `bus_redis` for a cluster over one Redis):

- `publish(room, body)` assigns the room's next stream position atomically
  with delivery, so every subscriber sees one order; it returns the position
  or raises `BusUnavailable` (nothing published) or `PublishUnconfirmed`
  (outcome unknown) within the configured timeout; it never hangs.
- `publish(room, body, idempotency_key=K)`: the first publish of K in the
  room within the bus's idempotency window publishes and remembers its
  position, in the same atomic step; a later one returns that position with
  `duplicate=True` and publishes nothing. So a caller may retry a publish
  that ended `PublishUnconfirmed` with the same key. Keys are per room.
- `publish_nowait(...)` starts a publish without waiting for it: a caller
  may have several in flight, and those it started one after another take
  positions in that order.
- `subscribe(room)` returns once messages published afterwards will reach
  this worker; `unsubscribe(room)` stops them. A bus carries only the rooms
  subscribed here (no global channel) and restores them after a reconnect.
- Received messages go to the `deliver` callback, one call per message, on
  the event loop thread, in channel order.
- `read_history(room, ...)` returns the room's stream position and the kept
  messages after a given one, read atomically, so a joiner can be given
  exactly what it missed (the hub stitches it to the live stream by `seq`).
- A room's `epoch` changes whenever its position cannot be trusted to
  continue what subscribers saw (its state was lost, or Redis came back with
  an older copy of it); within one epoch `seq` never goes back.

Workers, the route service and the control plane depend on this interface,
never on Redis directly for room traffic.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from typing import Callable, NamedTuple

from node.history import HistoryPolicy


class BusUnavailable(Exception):
    """The bus cannot be reached now; nothing was published. Retry later."""


class PublishUnconfirmed(BusUnavailable):
    """The publish reached Redis (or may have) but was not confirmed in time.

    The message may or may not be in the room's stream; a blind retry can
    publish it twice.
    """


class Position(NamedTuple):  # a NamedTuple, not a dataclass: one is made per publish (cheaper to build)
    seq: int  # increases by one per message in the room
    epoch: str  # changes when the room's stream state was lost
    duplicate: bool = False  # a publish whose idempotency key was already used: this is the first one's position


class BusMessage(NamedTuple):  # a NamedTuple: one is made per message received
    room: str
    seq: int
    epoch: str
    body: bytes  # node.envelope bytes, exactly as published


@dataclass(frozen=True, slots=True)
class HistoryPage:
    seq: int  # the room's latest sequence number (0: no message in this epoch yet)
    epoch: str  # the room's current epoch ("" while the room has no stream state)
    messages: list[BusMessage]  # kept messages in seq order (after `since`, or the latest ones)


# Idempotency keys (WebSocket `idempotencyKey`, HTTP `idempotency_key`): 1..64 printable ASCII characters.
MAX_IDEMPOTENCY_KEY_CHARS = 64
DEFAULT_IDEMPOTENCY_WINDOW_S = 300  # how long a bus remembers a key unless told otherwise


def valid_idempotency_key(key: object) -> bool:
    """Whether `key` is an idempotency key a bus accepts: 1..64 printable ASCII characters (no space)."""
    return (
        isinstance(key, str) and 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS
        and all("!" <= char <= "~" for char in key)
    )


# `since_seq` values of read_history that are not positions
POSITION_ONLY = -1  # return the position, no messages
LATEST = -2  # return the latest `limit` messages

DeliverFn = Callable[[BusMessage], None]
StateFn = Callable[[bool], None]  # True once (re)connected with every room re-subscribed, False when lost


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
    async def publish(self, room: str, body: bytes, idempotency_key: str | None = None) -> Position:
        """Append to the room's stream and deliver to its subscribers.

        With an `idempotency_key` (`valid_idempotency_key`) already used in this
        room within the bus's idempotency window: publish nothing and return the
        first publish's position with `duplicate=True`.
        """

    def publish_nowait(self, room: str, body: bytes, idempotency_key: str | None = None) -> asyncio.Future:
        """Start `publish` at once and return its future (same result, same errors, same bound in time).

        Publishes started one after another by one caller are assigned positions in
        that order (a failed one takes none). Raises ValueError for an invalid key.
        """
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            raise ValueError("an idempotency key is 1..64 printable ASCII characters")
        return asyncio.ensure_future(self.publish(room, body, idempotency_key))

    @abc.abstractmethod
    async def read_history(self, room: str, since_seq: int, since_epoch: str, limit: int) -> HistoryPage:
        """The room's position and up to `limit` kept messages with seq > since_seq.

        If `since_epoch` is not the room's epoch, messages are read from the
        start of the current epoch. `since_seq` may be POSITION_ONLY or LATEST.
        Raises BusUnavailable.
        """

    def history_policy(self, room: str) -> HistoryPolicy:
        """How many messages the bus keeps for `room`, and how long (none unless a bus says otherwise)."""
        return HistoryPolicy(0, 0)

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
