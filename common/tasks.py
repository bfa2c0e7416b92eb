"""Stopping background tasks reliably.

Owns `stop_tasks`, the one way a service cancels its background loops at
shutdown. It must not know what the tasks do.

Why it exists: redis-py (8.1) can swallow a cancellation that lands inside
a command (the command returns normally, or raises ConnectionError, which a
retrying loop catches). A single `task.cancel()` followed by `gather` would
then wait forever on a `while True` loop, and the process would never stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

RECANCEL_INTERVAL_S = 0.1  # how often a task that went on after cancel() is cancelled again


async def stop_tasks(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel `tasks` and wait until every one has finished, cancelling again any that goes on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_INTERVAL_S)
