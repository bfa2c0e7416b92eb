"""Members that stay connected miss nothing when their worker's bus subscription drops and returns."""

from __future__ import annotations

import asyncio

from chaos.eventually import eventually
from tests.delivery.resuming import publish_numbered
from tests.wsclient import WsClient


async def test_messages_published_while_the_subscription_was_down_reach_connected_members(start_node, redis_server):
    # A slow reconnect (0.25-0.5 s) guarantees messages are published while worker 0 hears nothing.
    node = start_node(2, "--bus-reconnect-base-s", "0.5", "--history-size", "1000",
                      "--message-rate-per-s", "1000", "--message-burst", "1000")
    room = "chat:gap"
    listener = await WsClient.connect(node.ws_url(0))
    await listener.join(room)
    publisher = await WsClient.connect(node.ws_url(1))
    await publisher.join(room)
    progress: list[int] = []
    total = 80
    publishing = asyncio.create_task(publish_numbered(publisher, room, total, 0.02, progress=progress))
    for cut_at in (15, 45):
        await eventually(lambda: len(progress) >= cut_at, what=f"{cut_at} messages acknowledged", timeout_s=30)
        # Drop every pub/sub connection (both workers'); command connections keep publishing.
        killed = await asyncio.to_thread(redis_server.command, "CLIENT", "KILL", "TYPE", "pubsub")
        assert int(killed) >= 1, killed  # the cut happened (the gap-filled count below proves worker 0 was hit)
    acked = await asyncio.wait_for(publishing, 60)
    seqs = []
    while len(seqs) < total:
        frame = await listener.expect("message", timeout_s=15)
        seqs.append(frame["seq"])
    assert seqs == acked == list(range(1, total + 1))
    # The fill did the work, not luck: worker 0 delivered messages from history after a cut.
    await eventually(lambda: node.metric(0, "ringcast_gap_filled_messages_total") > 0,
                     what="worker 0 to count gap-filled messages")
    await listener.close()
    await publisher.close()
