"""Waiting for a condition: the one polling helper of the tests, drills and local clusters.

Owns the rule every "wait until X" follows here: ask a probe again and again,
briefly, until it answers what is wanted or a bounded time has passed, then
fail with what was wanted and what was last seen (value or exception). A test
waits for the condition it checks, never sleeps and hopes.

Two forms of the same loop:

- `eventually` for async code. It never blocks the event loop: a plain
  (synchronous) probe runs in a worker thread, so a probe that does blocking
  I/O (an HTTP GET of /metrics, redis-cli) leaves every client socket of the
  test served while it waits; an async probe is awaited on the loop.
- `eventually_blocking` for synchronous code only (starting processes in
  fixtures, the CLI). Never call it from a coroutine.

It must not know what it waits for: callers pass the probe.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, TypeVar, Union

T = TypeVar("T")
Probe = Callable[[], Union[T, Awaitable[T]]]

_UNSET: Any = object()
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 0.05


class Timeout(AssertionError):
    """The condition did not hold within the time allowed; says what was last seen."""


class _Watch:
    """What one wait remembers between probes, and its verdict on each answer."""

    def __init__(self, what: str, timeout_s: float, equals: Any) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.equals = equals
        self.last_value: Any = _UNSET
        self.last_error: BaseException | None = None

    def satisfied(self, value: Any) -> bool:
        self.last_value, self.last_error = value, None
        return bool(value) if self.equals is _UNSET else value == self.equals

    def failed(self, error: Exception) -> None:
        self.last_error = error

    def timeout(self) -> Timeout:
        wanted = f" == {self.equals!r}" if self.equals is not _UNSET else ""
        if self.last_error is not None:
            seen = f"last error: {type(self.last_error).__name__}: {self.last_error}"
        elif self.last_value is _UNSET:
            seen = "the probe never answered"
        else:
            seen = f"last saw {self.last_value!r}"
        return Timeout(f"timed out after {self.timeout_s}s waiting for {self.what}{wanted} ({seen})")


async def eventually(
    probe: Probe[T], *, what: str, equals: Any = _UNSET,
    timeout_s: float = DEFAULT_TIMEOUT_S, interval_s: float = DEFAULT_INTERVAL_S,
) -> T:
    """Poll `probe` until its answer is truthy (or `== equals`); return that answer.

    A probe that raises is asked again (a server still starting refuses
    connections); the last exception is reported if time runs out. Raises
    `Timeout` after `timeout_s`.
    """
    watch = _Watch(what, timeout_s, equals)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    is_async = inspect.iscoroutinefunction(probe)
    while True:
        try:
            value = await probe() if is_async else await asyncio.to_thread(probe)
            if inspect.isawaitable(value):  # a lambda around an async call
                value = await value
            if watch.satisfied(value):
                return value
        except Exception as exc:  # noqa: BLE001 - reported if the condition never holds
            watch.failed(exc)
        if loop.time() >= deadline:
            raise watch.timeout()
        await asyncio.sleep(interval_s)


def eventually_blocking(
    probe: Callable[[], T], *, what: str, equals: Any = _UNSET,
    timeout_s: float = DEFAULT_TIMEOUT_S, interval_s: float = DEFAULT_INTERVAL_S,
) -> T:
    """`eventually` for synchronous callers (process start, CLI); blocks the calling thread."""
    watch = _Watch(what, timeout_s, equals)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
            if watch.satisfied(value):
                return value
        except Exception as exc:  # noqa: BLE001 - reported if the condition never holds
            watch.failed(exc)
        if time.monotonic() >= deadline:
            raise watch.timeout()
        time.sleep(interval_s)
