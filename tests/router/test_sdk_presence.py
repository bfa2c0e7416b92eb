"""The SDK's history(), presence() and presence_stats(), and presence_diff events, against a real node and router."""

from __future__ import annotations

import pytest

from chaos.eventually import eventually
from router.client import Client, Position, ServerError
from tests.client_helpers import FAST, next_message
from tests.router.helpers import publish_ring

PRESENCE = ("--presence-rule", "chat:*", "--presence-events-rule", "chat:*", "--presence-events-interval-ms", "100")


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_history_reads_a_rooms_kept_messages(redis_server, start_node, start_router, codec):
    node = start_node(2, *PRESENCE)
    await publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url)
    async with Client(router.url(), codec=codec, backoff=FAST) as client:
        await client.join("news")
        for text in ("a", "b", "c"):
            await client.publish("news", text)
        page = await client.history("news")
        assert ([m["text"] for m in page["messages"]], page["complete"], page["seq"]) == (["a", "b", "c"], True, 3)
        latest = await client.history("news", limit=2)
        assert [m["text"] for m in latest["messages"]] == ["b", "c"]
        after = await client.history("news", since=Position(1, page["epoch"]))
        assert [m["text"] for m in after["messages"]] == ["b", "c"]
        # A room it never joined is readable too (without auth every room is in scope).
        assert (await client.history("quiet"))["messages"] == []


async def test_presence_and_stats_list_both_clients_and_diffs_are_yielded(redis_server, start_node, start_router):
    node = start_node(2, *PRESENCE)
    await publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url)
    async with Client(router.url(), backoff=FAST) as first, Client(router.url(), backoff=FAST) as second:
        await first.join("chat:sdk")
        await second.join("chat:sdk")
        both = {first.connection_id, second.connection_id}

        async def members() -> set:
            return {m["conn"] for m in (await first.presence("chat:sdk"))["members"]}

        await eventually(members, what="both members listed", equals=both, timeout_s=10)
        reply = await second.presence("chat:sdk")
        assert reply["type"] == "presence" and reply["count"] == 2 and reply["complete"]
        assert {m["worker"] for m in reply["members"]} == {first.worker_id, second.worker_id}
        stats = await second.presence_stats("chat:sdk")
        assert (stats["connections"], stats["users"]) == (2, 2)
        with pytest.raises(ServerError) as refused:
            await first.presence("lobby")
        assert refused.value.code == "PRESENCE_DISABLED"

        # The second client's join reaches the first one as a presence_diff, yielded like a message.
        async def heard_second() -> bool:
            frame = await next_message(first, timeout_s=2)
            return frame["type"] == "presence_diff" and frame["room"] == "chat:sdk" \
                and second.connection_id in {m["conn"] for m in frame["joined"]}

        await eventually(heard_second, what="the second's join yielded to the first as a presence_diff", timeout_s=10)
