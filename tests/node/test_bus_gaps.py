"""A jump in seq on a worker's live stream, with real processes: the worker fills it from history.

Real redis-server and a real node. A message is put in the room's stream
(seq and history) but not on its channel, exactly as a subscription that
missed it would see it; the next live message then jumps, and the member
must still receive the missed one, in order, before it.
"""

from __future__ import annotations

import redis.asyncio as redis_async

from node import envelope
from node.bus_redis import PUBLISH_SCRIPT, BusKeys
from tests.node.test_resilience import FAST_BUS, expect_text, publish_until_acked
from tests.wsclient import WsClient

KEYS = BusKeys("ringcast:room:", "ringcast:")  # NodeConfig defaults


async def publish_off_channel(redis_url: str, room: str, text: str) -> None:
    """Append to the room's stream with the worker's own script, PUBLISHing to a channel nobody hears."""
    client = redis_async.Redis.from_url(redis_url)
    try:
        body = envelope.pack(envelope.Envelope(1_700_000_000_000, "test", "text", text))
        # One publish (ARGV[1]) of 2 keys: channel, body, state TTL, history size and TTL, idempotency window.
        await client.eval(PUBLISH_SCRIPT, 2, KEYS.state_key(room), KEYS.history_key(room),
                          1, 2, "ringcast:test:nowhere", body, 300, 100, 300, 300)
    finally:
        await client.aclose()


async def test_a_message_missing_from_the_live_stream_is_filled_before_the_next(start_node, redis_server):
    node = start_node(1, *FAST_BUS)
    member = await WsClient.connect(node.ws_url(0))
    publisher = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("r")
        await publisher.join("r")
        await publish_until_acked(publisher, "r", "m1")
        await publish_off_channel(redis_server.url, "r", "missed")
        await publish_until_acked(publisher, "r", "m3")
        got = [await member.expect("message", timeout_s=15) for _ in range(3)]
        assert [(f["seq"], f["text"]) for f in got] == [(1, "m1"), (2, "missed"), (3, "m3")]
        await publish_until_acked(publisher, "r", "m4")
        assert (await expect_text(member, "m4"))["seq"] == 4
        assert not [f for f in member.seen if f["type"] == "joined" and "recovered" in f]  # filled: nothing to announce
    finally:
        await member.close()
        await publisher.close()
