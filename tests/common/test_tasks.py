"""Stopping background loops even when a cancellation is lost on the way (common/tasks.py)."""

import asyncio

from common.tasks import stop_tasks


async def test_stop_tasks_cancels_again_a_task_that_swallowed_its_cancellation():
    swallowed = 0

    async def loop_whose_redis_call_swallows_one_cancellation() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)  # a Redis call in flight
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what redis-py 8.1 sometimes does: return normally instead

    task = asyncio.create_task(loop_whose_redis_call_swallows_one_cancellation())
    await asyncio.sleep(0)  # let it reach its first await
    await asyncio.wait_for(stop_tasks([task]), 10)
    assert swallowed == 1 and task.cancelled()
