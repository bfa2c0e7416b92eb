"""What Redis itself says about the node's subscriptions, for the integration tests.

Owns asking the test's redis-server (via redis-cli, in a thread so the test's
WebSocket clients keep being served) which pub/sub channels exist and how many
subscribers each has, and waiting until that matches an expectation. Shared by
tests/node; it must not talk to workers.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

PREFIX = "ringcast:room:"  # NodeConfig.channel_prefix default

T = TypeVar("T")


async def channels(redis_server) -> set[str]:
    out = await asyncio.to_thread(redis_server.command, "PUBSUB", "CHANNELS", "*")
    return {line for line in out.decode().splitlines() if line}


async def numsub(redis_server, room: str) -> int:
    out = await asyncio.to_thread(redis_server.command, "PUBSUB", "NUMSUB", PREFIX + room)
    name, count = out.decode().split()
    assert name == PREFIX + room
    return int(count)


async def numpat(redis_server) -> int:
    return int((await asyncio.to_thread(redis_server.command, "PUBSUB", "NUMPAT")).decode().strip())


async def subscriber_connections(redis_server) -> int:
    """Client connections of this Redis currently subscribed to at least one channel."""
    out = (await asyncio.to_thread(redis_server.command, "CLIENT", "LIST")).decode()
    count = 0
    for line in out.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if int(fields.get("sub", "0")) > 0 or int(fields.get("psub", "0")) > 0:
            count += 1
    return count


def room_channels(*rooms: str) -> set[str]:
    return {PREFIX + room for room in rooms}


async def eventually(probe: Callable[[], Awaitable[T]], expected: T, timeout_s: float = 10.0) -> T:
    """Poll `probe` until it returns `expected`; fail with the last value seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await probe()
        if value == expected:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"expected {expected!r} within {timeout_s}s, last saw {value!r}")
        await asyncio.sleep(0.05)
