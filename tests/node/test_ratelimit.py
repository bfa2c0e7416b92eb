"""Unit tests of node/ratelimit.py: token bucket arithmetic and per-user buckets (the caller passes the clock)."""

from __future__ import annotations

import pytest

from node.ratelimit import TokenBucket, UserBuckets


def test_token_bucket_allows_the_burst_then_refills_at_the_rate():
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token needs 1/2 s
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(1000.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refilled to the burst, not beyond


def test_user_buckets_are_shared_and_kept_after_the_last_connection_in_a_bounded_lru():
    users = UserBuckets(rate_per_s=1.0, burst=2, max_idle_users=1)
    first, second = users.acquire("alice", 0.0), users.acquire("alice", 0.0)
    assert first is second
    first.take(0.0), first.take(0.0)
    users.release("alice"), users.release("alice")
    assert users.acquire("alice", 0.0).take(0.0) > 0  # a reconnect does not refill
    users.release("alice")
    users.acquire("bob", 0.0), users.release("bob")  # evicts alice from the one idle slot
    assert len(users) == 1
    assert users.acquire("alice", 0.0).take(0.0) == 0.0
    users.release("nobody")  # harmless
