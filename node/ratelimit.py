"""Token buckets: the message-rate limits and the per-address admission limits. No I/O, no clock.

Owns the arithmetic only (per connection, per user across a user's connections,
per client address for admission); callers pass the current monotonic time in seconds.
"""

from __future__ import annotations

import collections


class TokenBucket:
    """`rate_per_s` tokens per second, at most `burst` saved up; one frame costs one token."""

    __slots__ = ("rate_per_s", "burst", "tokens", "stamp")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def wait_s(self, now: float) -> float:
        """Seconds until a token is available (0.0: one is), spending nothing."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    def take(self, now: float) -> float:
        """Spend one token. Returns 0.0 if allowed, else seconds until one is available."""
        tokens = self.tokens + (now - self.stamp) * self.rate_per_s
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate_per_s


class UserBuckets:
    """Per-user token buckets shared by all of a user's connections on one worker.

    Bounded: a user with open connections keeps its bucket (so it is bounded by
    the worker's connections); once its last connection closes the bucket
    waits in an idle LRU of `max_idle_users` entries, so a quick reconnect
    does not refill it, and the least recently used idle bucket is evicted.
    """

    __slots__ = ("rate_per_s", "burst", "max_idle_users", "live", "idle")

    def __init__(self, rate_per_s: float, burst: int, max_idle_users: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_idle_users = max_idle_users
        self.live: dict[str, list] = {}  # user -> [bucket, open connections]
        self.idle: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def acquire(self, user: str, now: float) -> TokenBucket:
        entry = self.live.get(user)
        if entry is None:
            bucket = self.idle.pop(user, None) or TokenBucket(self.rate_per_s, self.burst, now)
            entry = self.live[user] = [bucket, 0]
        entry[1] += 1
        return entry[0]

    def release(self, user: str) -> None:
        entry = self.live.get(user)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self.live[user]
            self.idle[user] = entry[0]
            while len(self.idle) > self.max_idle_users:
                self.idle.popitem(last=False)

    def __len__(self) -> int:
        return len(self.live) + len(self.idle)


class KeyedBuckets:
    """Token buckets by key (a client address), at most `max_keys` of them.

    A key gets a bucket the first time `take` charges it; `wait_s` of a key
    never charged is 0.0. Past `max_keys` the least recently charged bucket is
    forgotten, which forgives that key: the table costs memory in proportion to
    `max_keys`, never to the number of keys seen.
    """

    __slots__ = ("rate_per_s", "burst", "max_keys", "buckets")

    def __init__(self, rate_per_s: float, burst: int, max_keys: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def wait_s(self, key: str, now: float) -> float:
        bucket = self.buckets.get(key)
        return 0.0 if bucket is None else bucket.wait_s(now)

    def take(self, key: str, now: float) -> float:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate_per_s, self.burst, now)
            while len(self.buckets) > self.max_keys:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self.buckets)
