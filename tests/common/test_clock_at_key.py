"""common.redis_connect.TIME_AT_KEY_SCRIPT on a real Redis Cluster: presence answers read the clock of the
node that owns their hash (a cluster pipeline refuses TIME), so an entry whose expiry that clock has
passed is left out even while the hash itself lives on."""

from __future__ import annotations

from chaos.eventually import eventually
from common.presence import Presence, present
from common.redis_connect import parse_url


async def test_an_entry_past_its_expiry_is_left_out_of_a_cluster_presence_answer(cluster3):
    client = parse_url(cluster3.url).client(timeout_s=5.0)
    key = "clock-test:{presence}"
    try:
        short = Presence(client, key, "short", "ws://127.0.0.1:1/ws", ttl_s=0.5)
        long = Presence(client, key, "long", "ws://127.0.0.1:2/ws", ttl_s=120.0)
        await short.announce()
        await long.announce()  # the hash now lives 120 s: only the entries' own expiry can drop "short"

        async def ids() -> list[str]:
            return [entry["id"] for entry in await present(client, key)]

        await eventually(ids, equals=["long"], what="the expired entry left out by the key node's clock",
                         timeout_s=15)
        assert await client.hlen(key) == 2  # still stored: only the clock tells it is gone
    finally:
        await client.delete(key)
        await client.aclose()
