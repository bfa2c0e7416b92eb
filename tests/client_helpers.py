"""Shared steps of the tests that drive the client SDK (`router.client.Client`): a fast reconnect
schedule and reading what the SDK yields with a deadline."""

from __future__ import annotations

import asyncio

from router.backoff import BackoffPolicy
from router.client import Client

FAST = BackoffPolicy(base_s=0.1, factor=2.0, cap_s=1.0, jitter=0.3)  # a test need not wait 1-30 s


async def next_message(client: Client, timeout_s: float = 10.0) -> dict:
    """The next frame the SDK yields (a message, or a `joined` marking a gap)."""
    async with asyncio.timeout(timeout_s):
        return await anext(client)


async def collect_until(client: Client, until_seq: int, timeout_s: float) -> list[dict]:
    """Every frame the SDK yields until a message with seq >= `until_seq`."""
    frames: list[dict] = []
    async with asyncio.timeout(timeout_s):
        async for frame in client:
            frames.append(frame)
            if frame.get("type") == "message" and frame["seq"] >= until_seq:
                return frames
    return frames
