"""New-room quota: how fast one client may name rooms it has not used recently. No I/O, no clock.

Owns the arithmetic that bounds the Redis keys a client can make the
cluster create: every room published to keeps a state hash and a history
stream in Redis until their TTL, so a client looping over fresh room names
would fill Redis (and under `maxmemory-policy noeviction` every publish of
the cluster would then fail). Per identity (the token's `sub` with auth on;
the connection id without auth), the rooms it joined recently are
remembered (`remembered_rooms`, least recently used forgotten first); a
join of a room not among them costs one token of a bucket that refills at
`rate_per_s` up to `burst`. Joins of remembered rooms (re-joins after a
reconnect, gap repairs) are free.

Bounded memory: at most `max_identities` identities are tracked (least
recently active forgotten first), each with at most `remembered_rooms`
names. Callers pass the current monotonic time in seconds; the session
decides what an identity is and what to answer (NEW_ROOM_RATE_EXCEEDED).
"""

from __future__ import annotations

import collections

from node.ratelimit import TokenBucket


class _Identity:
    __slots__ = ("bucket", "rooms")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.rooms: collections.OrderedDict[str, None] = collections.OrderedDict()


class RoomQuota:
    """Per identity: a token bucket of room names it has not used recently."""

    def __init__(self, rate_per_s: float, burst: int, remembered_rooms: int, max_identities: int) -> None:
        if rate_per_s <= 0 or burst <= 0 or remembered_rooms <= 0 or max_identities <= 0:
            raise ValueError("rate_per_s, burst, remembered_rooms and max_identities must be > 0")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.remembered_rooms = remembered_rooms
        self.max_identities = max_identities
        self._identities: collections.OrderedDict[str, _Identity] = collections.OrderedDict()

    def check(self, identity: str, room: str, now: float) -> float:
        """0.0 if `identity` may join `room` now (the room is then remembered), else seconds to wait.

        A refused room is not remembered: asking again costs a token again.
        """
        state = self._identities.get(identity)
        if state is None:
            state = self._identities[identity] = _Identity(TokenBucket(self.rate_per_s, self.burst, now))
            while len(self._identities) > self.max_identities:
                self._identities.popitem(last=False)
        else:
            self._identities.move_to_end(identity)
        if room in state.rooms:
            state.rooms.move_to_end(room)
            return 0.0
        wait_s = state.bucket.take(now)
        if wait_s:
            return wait_s
        state.rooms[room] = None
        while len(state.rooms) > self.remembered_rooms:
            state.rooms.popitem(last=False)
        return 0.0

    def forget(self, identity: str) -> None:
        """Drop what is known of `identity` (a connection id whose socket closed)."""
        self._identities.pop(identity, None)

    def __len__(self) -> int:
        return len(self._identities)
