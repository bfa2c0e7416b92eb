"""Stream positions past what the Redis bus can write: refused by the protocol, not by Redis.

The bus's Lua script builds the history stream ID `since.seq + 1` as text, and
Lua 5.1 writes 10**14 as `1e+14`: before the range was checked, such a join
reached Redis and came back as a misleading BUS_UNAVAILABLE.
"""

from __future__ import annotations

import pytest

from node.protocol import MAX_SEQ
from tests.wsclient import WsClient


@pytest.mark.parametrize("kind", ["join", "history"])
async def test_a_since_seq_past_the_range_is_invalid_and_the_top_of_the_range_reaches_redis(start_node, kind):
    node = start_node(1)
    client = await WsClient.connect(node.ws_url())
    try:
        # A never-published room has the empty epoch, so Redis reads its stream from exactly since.seq + 1.
        for seq in (10**14, MAX_SEQ + 1):
            await client.send({"type": kind, "room": "resume", "since": {"seq": seq, "epoch": ""}, "id": seq})
            error = await client.expect("error")
            assert (error["code"], error["id"]) == ("INVALID_MESSAGE_FORMAT", seq), error
            assert str(MAX_SEQ) in error["message"]
        await client.send({"type": kind, "room": "resume", "since": {"seq": MAX_SEQ, "epoch": ""}, "id": "top"})
        answer = await client.expect_any(("joined", "history", "error"))
        assert answer["type"] == ("joined" if kind == "join" else "history"), answer  # not BUS_UNAVAILABLE
        assert answer["id"] == "top"
    finally:
        await client.close()
