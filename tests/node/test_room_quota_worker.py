"""The new-room quota in a real worker: a client looping over fresh room names is refused, re-joins are free."""

from __future__ import annotations

from tests.wsclient import WsClient


async def test_a_worker_refuses_joins_of_new_rooms_past_the_quota_and_lets_rooms_joined_before_in(start_node):
    node = start_node(1, "--new-room-burst", "2", "--new-room-rate-per-s", "0.01")
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.join("fresh-1")
        await client.join("fresh-2")
        await client.send({"type": "join", "room": "fresh-3", "id": "third"})
        refused = await client.expect_any(("joined", "error"))
        assert refused["type"] == "error" and refused["code"] == "NEW_ROOM_RATE_EXCEEDED" and refused["id"] == "third"
        assert refused["retryAfter"] > 0
        await client.send({"type": "leave", "room": "fresh-1"})
        await client.expect("left")
        assert (await client.join("fresh-1"))["room"] == "fresh-1"  # joined recently: free
        assert node.metric(0, "ringcast_errors_total", 'code="NEW_ROOM_RATE_EXCEEDED"') == 1
    finally:
        await client.close()
