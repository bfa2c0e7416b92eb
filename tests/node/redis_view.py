"""What Redis itself says about the node's subscriptions, for the integration tests.

Owns asking the test's redis-server (via redis-cli, in a thread so the test's
WebSocket clients keep being served) which pub/sub channels exist, how many
subscribers each has, and which client connections it holds. Shared by tests/node; it must not talk to workers, and
it does not wait: a test waits for a probe with `chaos.eventually.eventually`.
"""

from __future__ import annotations

import asyncio

PREFIX = "ringcast:room:"  # NodeConfig.channel_prefix default


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


async def clients(redis_server) -> list[dict[str, str]]:
    """Redis's client connections (CLIENT LIST): per connection, its fields (addr, flags, cmd, sub...)."""
    out = (await asyncio.to_thread(redis_server.command, "CLIENT", "LIST")).decode()
    return [dict(part.split("=", 1) for part in line.split() if "=" in part) for line in out.splitlines()]


async def subscriber_connections(redis_server) -> int:
    """Client connections of this Redis currently subscribed to at least one channel."""
    return sum(1 for fields in await clients(redis_server)
               if int(fields.get("sub", "0")) > 0 or int(fields.get("psub", "0")) > 0)


def room_channels(*rooms: str) -> set[str]:
    return {PREFIX + room for room in rooms}
