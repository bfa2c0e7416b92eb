"""The per-user token buckets: shared by a user's connections, and a bounded map."""

from __future__ import annotations

from node.ratelimit import UserBuckets


def test_connections_of_one_user_share_one_bucket_and_other_users_have_their_own():
    buckets = UserBuckets(rate_per_s=1.0, burst=3, max_idle_users=10)
    first, second = buckets.acquire("alice", 0.0), buckets.acquire("alice", 0.0)
    assert first is second
    assert [first.take(0.0), second.take(0.0), first.take(0.0)] == [0.0, 0.0, 0.0]
    assert second.take(0.0) > 0  # alice's 3 are spent, whichever socket asks
    assert buckets.acquire("bob", 0.0).take(0.0) == 0.0


def test_a_reconnect_does_not_refill_the_bucket():
    buckets = UserBuckets(rate_per_s=1.0, burst=2, max_idle_users=10)
    bucket = buckets.acquire("alice", 0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    buckets.release("alice")
    assert buckets.acquire("alice", 0.0).take(0.0) > 0


def test_the_map_is_bounded_live_users_stay_and_idle_ones_are_evicted_oldest_first():
    buckets = UserBuckets(rate_per_s=1.0, burst=1, max_idle_users=2)
    live = buckets.acquire("live", 0.0)
    for n in range(100):
        buckets.acquire(f"u{n}", 0.0)
        buckets.release(f"u{n}")
    assert len(buckets) == 3  # one live + two idle, whatever came before
    assert set(buckets.idle) == {"u98", "u99"}
    assert buckets.acquire("live", 0.0) is live
    buckets.release("live")
    buckets.release("live")
    assert "live" in buckets.idle and "u98" not in buckets.idle
    buckets.release("never-seen")  # harmless
    assert len(buckets) == 2
