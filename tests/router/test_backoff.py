"""The SDK's reconnect schedule: bounds, growth, and no synchronized reconnect storm.

No sleeping: the schedule is pure, so thousands of simulated clients replay it
with seeded randomness and the test looks at when their retries would land.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.backoff import BackoffPolicy

CLIENTS = 5_000
ATTEMPTS = 8
BIN_S = 0.05


def test_defaults_are_the_tutorials_figures():
    policy = BackoffPolicy()
    assert (policy.base_s, policy.factor, policy.cap_s, policy.jitter) == (1.0, 2.0, 30.0, 0.3)
    assert [policy.ceiling_s(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_every_delay_lies_within_its_jitter_band_and_under_the_cap():
    policy = BackoffPolicy()
    rng = random.Random(7)
    for attempt in range(40):
        ceiling = policy.ceiling_s(attempt)
        for _ in range(200):
            delay = policy.delay_s(attempt, rng.random)
            assert ceiling * 0.7 <= delay <= ceiling <= 30.0


def test_huge_attempt_numbers_stay_at_the_cap():
    assert BackoffPolicy().ceiling_s(10_000) == 30.0


@pytest.mark.parametrize("bad", [dict(base_s=0), dict(cap_s=-1), dict(factor=0.5), dict(jitter=1.5)])
def test_bad_policies_are_refused(bad):
    with pytest.raises(ValueError):
        BackoffPolicy(**bad)


def retry_times(policy: BackoffPolicy, seed: int) -> list[float]:
    """When each of CLIENTS, all cut off at t=0 and failing every retry, tries again."""
    times = []
    for client in range(CLIENTS):
        rng = random.Random(seed * 1_000_003 + client)
        now = 0.0
        for attempt in range(ATTEMPTS):
            now += policy.delay_s(attempt, rng.random)
            times.append(now)
    return times


def busiest_bin_share(times: list[float]) -> float:
    bins = Counter(int(t / BIN_S) for t in times)
    return max(bins.values()) / CLIENTS


def test_a_mass_disconnect_does_not_turn_into_a_synchronized_storm():
    default_share = busiest_bin_share(retry_times(BackoffPolicy(), seed=1))
    full_jitter_share = busiest_bin_share(retry_times(BackoffPolicy(jitter=1.0), seed=2))
    synchronized_share = busiest_bin_share(retry_times(BackoffPolicy(jitter=0.0), seed=3))
    print(f"busiest {BIN_S * 1000:.0f} ms of retries: default {default_share:.1%}, "
          f"full jitter {full_jitter_share:.1%}, no jitter {synchronized_share:.1%} of {CLIENTS} clients")
    # Without jitter every client retries in the same instant: the counter-example.
    assert synchronized_share == 1.0
    # The default's first retry spreads over 0.3 s (6 bins): no bin should hold much more
    # than a sixth of the clients; full jitter spreads over 1 s (20 bins).
    assert default_share < 0.25
    assert full_jitter_share < 0.10


def test_later_attempts_spread_wider_than_earlier_ones():
    policy = BackoffPolicy()
    rng = random.Random(5)
    spreads = []
    for attempt in range(5):
        delays = [policy.delay_s(attempt, rng.random) for _ in range(CLIENTS)]
        spreads.append(max(delays) - min(delays))
    assert spreads == sorted(spreads)
    assert spreads[0] > 0.25  # 30 % of a 1 s ceiling, nearly all of it used by 5,000 draws
