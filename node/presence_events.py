"""Join/leave events: a room's membership changes, coalesced into one `presence_diff` per window.

Owns two things:

- `DiffCoalescer` (sans-I/O, no clock): the joins and leaves a worker saw
  locally since the last `drain()`, reduced per room and connection to where
  the connection ended up: present (in `joined`) or absent (in `left`),
  never both. Churn within one window is not cancelled out: the presence
  store is written at once, so a member may have read `presence` between a
  join and a leave of the same window (it lists the connection) and must
  still hear of the leave; a connection that joined and left is in `left`,
  one that left and came back is in `joined`. Diffs are therefore applied
  as set updates (a `left` of someone not listed, a `joined` of someone
  listed: nothing to do). `drain()` hands out one `Diff` per room that
  changed and forgets them. A member that reads the membership at any point
  and applies every diff drained after that point ends with the membership
  at the last drain (tests/node/test_presence_events.py checks that
  property).
- `PresenceEvents` (the driver): every `presence_events_interval_ms` it
  drains the coalescer, sends each diff to the worker's local members of the
  room and publishes it on the room's presence channel
  (`<channel_prefix>presence:{room}`) for the other workers; it subscribes,
  on a `RedisSubscriber` of its own, the channels of the rooms it has local
  members of, and fans what other workers published to those members. A
  diff larger than `presence_events_max_entries` entries is sent as counts
  only (`truncated`): the client reads the `presence` snapshot instead.

It must not decide which rooms have events (node.presence's rules do), keep
who is in a room (node.presence does), touch the room's message stream (a
diff never takes a seq number or enters history) or write to Redis other
than through the `publish` callable it is given.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import orjson

from node import frames, protocol
from node.connection import Connection
from node.outbox import Outbox

log = logging.getLogger("ringcast.presence")

Member = dict  # {"user", "conn", "info", "worker"}: what a member looks like on the wire
# What a worker publishes for other workers: {"instance", "room", "joined": [...], "left": [...], "joinedCount",
# "leftCount"}. A payload larger than this is dropped unread (entries are bounded, so a valid one never is).
MAX_REMOTE_DIFF_BYTES = 1024 * 1024


@dataclass(slots=True)
class Diff:
    room: str
    joined: list[Member] = field(default_factory=list)
    left: list[Member] = field(default_factory=list)


class DiffCoalescer:
    """Where each connection with a join or leave since the last drain ended up, per room (one worker's own)."""

    def __init__(self) -> None:
        # room -> conn id -> (member now, or None when absent now; the member as last seen present)
        self._changes: dict[str, dict[str, tuple[Member | None, Member]]] = {}

    def __len__(self) -> int:
        """Rooms with a pending change."""
        return len(self._changes)

    def joined(self, room: str, member: Member) -> None:
        self._changes.setdefault(room, {})[member["conn"]] = (member, member)

    def left(self, room: str, member: Member) -> None:
        changes = self._changes.setdefault(room, {})
        previous = changes.get(member["conn"])
        changes[member["conn"]] = (None, previous[1] if previous is not None else member)

    def drain(self) -> list[Diff]:
        """Every room touched since the last drain: its connections now present in `joined`, now absent in `left`.

        A join and a leave within one window do not cancel out: someone may
        have read the store (`presence`) in between (see the module docstring)."""
        diffs = []
        for room, changes in self._changes.items():
            diff = Diff(room)
            for now, last_seen in changes.values():
                if now is not None:
                    diff.joined.append(now)
                else:
                    diff.left.append(last_seen)
            diffs.append(diff)
        self._changes = {}
        return diffs


def diff_frame(diff: Diff, max_entries: int) -> dict:
    """The `presence_diff` frame of a diff: members listed, or counts only past `max_entries` entries."""
    if len(diff.joined) + len(diff.left) > max_entries:
        return protocol.presence_diff(diff.room, [], [], len(diff.joined), len(diff.left), True)
    return protocol.presence_diff(diff.room, diff.joined, diff.left, len(diff.joined), len(diff.left), False)


def remote_payload(instance: str, frame: dict) -> bytes:
    """What other workers receive on the room's presence channel: the frame and who sent it."""
    return orjson.dumps({"instance": instance, "frame": frame})


def parse_remote(payload: bytes, instance: str) -> dict | None:
    """The `presence_diff` frame another worker published, or None (our own, oversized or malformed)."""
    if len(payload) > MAX_REMOTE_DIFF_BYTES:
        return None
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("instance") == instance:
        return None
    frame = body.get("frame")
    if not isinstance(frame, dict) or frame.get("type") != "presence_diff" or not isinstance(frame.get("room"), str):
        return None
    return frame


class PresenceEvents:
    """The driver: drains the coalescer every interval, fans diffs out locally and across workers."""

    def __init__(
        self, instance: str, outbox: Outbox, interval_s: float, max_entries: int,
        members_of: Callable[[str], Iterable[Connection]],
        publish: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """members_of(room): the worker's local connections in `room`.
        publish(room, payload): hands a diff to the other workers (None: a single process, local only)."""
        self.instance = instance
        self.outbox = outbox
        self.interval_s = interval_s
        self.max_entries = max_entries
        self.members_of = members_of
        self.publish = publish
        self.coalescer = DiffCoalescer()
        self.frames_sent = 0  # presence_diff frames queued to members, local and remote diffs (tests, benchmarks)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence-events")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.flush()
            except Exception:
                log.exception("bug while sending presence diffs")

    def flush(self) -> None:
        """Send what changed since the last flush: to local members, and to the other workers."""
        for diff in self.coalescer.drain():
            frame = diff_frame(diff, self.max_entries)
            self.fan_out(frame)
            if self.publish is not None:
                self.publish(diff.room, remote_payload(self.instance, frame))

    def on_remote(self, payload: bytes) -> None:
        """A diff another worker published on a presence channel this worker subscribes."""
        frame = parse_remote(payload, self.instance)
        if frame is not None:
            self.fan_out(frame)

    def fan_out(self, frame: dict) -> None:
        """Queue `frame` to every local member of its room, encoded once per codec."""
        encoded: dict[str, bytes] = {}
        for conn in self.members_of(frame["room"]):
            data = encoded.get(conn.codec)
            if data is None:
                data = encoded[conn.codec] = frames.data_frame(protocol.encode(frame, conn.codec), conn.binary)
            self.outbox.push(conn, data)
            self.frames_sent += 1
