"""Token buckets: the per-connection message-rate limit. No I/O, no clock.

Owns the arithmetic only; callers pass the current monotonic time in seconds.
"""

from __future__ import annotations


class TokenBucket:
    """`rate_per_s` tokens per second, at most `burst` saved up; one frame costs one token."""

    __slots__ = ("rate_per_s", "burst", "tokens", "stamp")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

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
