"""Capped exponential backoff with jitter: the one retry schedule in ringcast.

Every reconnect and retry loop uses it: the client SDK and its core's
drivers, the drills' clients, the control tests' fleet and the bus
subscriber's reconnect.

Owns the pure arithmetic of "how long to wait before attempt n": no clock, no
sleeping, no sockets. Randomness is injected (`rand`), so tests can replay the
schedule of thousands of simulated clients in microseconds.

The delay before retry `attempt` (0 for the first retry after a failure) is

    ceiling(attempt) = min(cap_s, base_s * factor ** attempt)
    delay(attempt)   = ceiling(attempt) * (1 - jitter * U),  U uniform in [0, 1)

so with the defaults (1 s doubling to a 30 s cap, 30 % jitter, the tutorial's
figures) the first retry comes after 0.7-1.0 s, the second after 1.4-2.0 s,
and so on; the delay never exceeds `cap_s`. `jitter=1.0` is AWS's "full jitter"
(uniform in [0, ceiling]): the widest spread, recommended when very many
clients share one failure. `jitter=0` is a synchronized schedule: every client
that lost its worker at the same instant retries at the same instant; the
tests use it as the counter-example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 1.0  # ceiling of the first retry's delay
    factor: float = 2.0  # growth of the ceiling per consecutive failure
    cap_s: float = 30.0  # largest ceiling: no delay is ever longer
    jitter: float = 0.3  # fraction of the ceiling that is random (0: none, 1: full jitter)

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s <= 0:
            raise ValueError("base_s and cap_s must be > 0")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")

    def ceiling_s(self, attempt: int) -> float:
        """The longest delay before retry `attempt` (0-based)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # Step up to the cap and stop there, so a huge attempt number cannot overflow a float.
        ceiling = self.base_s
        for _ in range(attempt):
            ceiling *= self.factor
            if ceiling >= self.cap_s:
                return self.cap_s
        return min(ceiling, self.cap_s)

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay before retry `attempt`: the ceiling less a random share of it."""
        ceiling = self.ceiling_s(attempt)
        return ceiling * (1.0 - self.jitter * rand())

    def schedule(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """Delays of consecutive retries (endless): attempt 0, 1, 2, ..."""
        attempt = 0
        while True:
            yield self.delay_s(attempt, rand)
            attempt += 1
