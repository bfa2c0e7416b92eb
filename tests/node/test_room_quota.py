"""node/room_quota.py: the per-identity budget of rooms not joined recently (pure arithmetic, no clock)."""

from __future__ import annotations

import pytest

from node.room_quota import RoomQuota


def test_a_burst_of_new_rooms_is_allowed_then_refused_with_the_wait():
    quota = RoomQuota(rate_per_s=2.0, burst=3, remembered_rooms=100, max_identities=10)
    assert [quota.check("u", f"r{i}", now=0.0) for i in range(3)] == [0.0, 0.0, 0.0]
    assert quota.check("u", "r3", now=0.0) == pytest.approx(0.5)  # one token at 2/s
    assert quota.check("u", "r3", now=0.5) == 0.0


def test_rooms_joined_recently_are_free_however_often():
    quota = RoomQuota(rate_per_s=1.0, burst=2, remembered_rooms=100, max_identities=10)
    assert quota.check("u", "a", 0.0) == 0.0 and quota.check("u", "b", 0.0) == 0.0
    assert all(quota.check("u", room, 0.0) == 0.0 for room in ("a", "b") * 50)  # re-joins after reconnects
    assert quota.check("u", "c", 0.0) > 0


def test_a_refused_room_is_not_remembered():
    quota = RoomQuota(rate_per_s=1.0, burst=1, remembered_rooms=100, max_identities=10)
    assert quota.check("u", "a", 0.0) == 0.0
    assert quota.check("u", "b", 0.0) > 0
    assert quota.check("u", "b", 0.1) > 0  # still new: refused again


def test_identities_have_separate_budgets_and_forget_resets_one():
    quota = RoomQuota(rate_per_s=1.0, burst=1, remembered_rooms=100, max_identities=10)
    assert quota.check("u1", "a", 0.0) == 0.0 and quota.check("u1", "b", 0.0) > 0
    assert quota.check("u2", "b", 0.0) == 0.0
    quota.forget("u1")
    assert quota.check("u1", "b", 0.0) == 0.0


def test_memory_is_bounded_in_identities_and_rooms_per_identity():
    quota = RoomQuota(rate_per_s=1000.0, burst=1000, remembered_rooms=5, max_identities=3)
    for i in range(10):
        quota.check(f"u{i}", "a", 0.0)
    assert len(quota) == 3
    for i in range(20):
        quota.check("u9", f"r{i}", 0.0)
    assert len(quota._identities["u9"].rooms) == 5  # the least recently joined were forgotten
    assert quota.check("u9", "r0", 0.0) == 0.0  # forgotten: new again, costs a token (there is one)


def test_a_client_looping_over_fresh_names_gets_at_most_burst_plus_rate_times_time():
    quota = RoomQuota(rate_per_s=1.0, burst=100, remembered_rooms=1000, max_identities=10)
    allowed = sum(quota.check("attacker", f"room-{i}", now=i * 0.001) == 0.0 for i in range(10_000))  # 10 s
    assert allowed <= 100 + 10 + 1


@pytest.mark.parametrize("bad", [dict(rate_per_s=0), dict(burst=0), dict(remembered_rooms=0), dict(max_identities=0)])
def test_bounds_must_be_positive(bad):
    args = dict(rate_per_s=1.0, burst=1, remembered_rooms=1, max_identities=1) | bad
    with pytest.raises(ValueError):
        RoomQuota(**args)
