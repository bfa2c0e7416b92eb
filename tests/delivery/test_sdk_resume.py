"""The SDK's side of the delivery promise: automatic resume, no duplicates, gaps surfaced."""

from __future__ import annotations

import asyncio
import os
import signal

from chaos.cluster import wait_until
from router.client import Client
from tests.delivery.resuming import publish_numbered
from tests.router.test_client import FAST, publish_ring, room_owned_by
from tests.wsclient import WsClient

FLAGS = ("--history-size", "1000", "--restart-backoff-base-s", "0.2",
         "--message-rate-per-s", "1000", "--message-burst", "1000")


async def _collect(client: Client, until_seq: int, timeout_s: float) -> list[dict]:
    frames: list[dict] = []
    async with asyncio.timeout(timeout_s):
        async for frame in client:
            frames.append(frame)
            if frame.get("type") == "message" and frame["seq"] >= until_seq:
                return frames
    return frames


async def test_sdk_resumes_after_its_worker_is_killed_with_every_message_once_in_order(
    redis_server, start_node, start_router
):
    node = start_node(2, *FLAGS)
    ring = publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url)
    room = room_owned_by(ring, node.ports[0])
    total = 120
    async with Client(router.url(), backoff=FAST) as reader:
        await reader.join(room)
        assert reader.worker_id == f"127.0.0.1:{node.ports[0]}"
        publisher = await WsClient.connect(node.ws_url(1))
        await publisher.join(room)
        progress: list[int] = []
        publishing = asyncio.create_task(publish_numbered(publisher, room, total, 0.01, progress=progress))
        collecting = asyncio.create_task(_collect(reader, total, 60))
        while len(progress) < total // 3:
            await asyncio.sleep(0.01)
        os.kill(node.worker_pid(0), signal.SIGKILL)
        acked = await asyncio.wait_for(publishing, 60)
        frames = await collecting
        await publisher.close()
    messages = [f for f in frames if f["type"] == "message"]
    assert [m["seq"] for m in messages] == acked == list(range(1, total + 1))
    assert [m["data"]["n"] for m in messages] == list(range(total))
    assert not reader.unrecovered and not [f for f in frames if f["type"] == "joined"]


async def test_sdk_surfaces_a_resume_that_could_not_be_complete(redis_server, start_node, start_router):
    node = start_node(1, *FLAGS)
    publish_ring(redis_server, node, epoch=1)
    router = start_router("--nodes", f"127.0.0.1:{node.ports[0]}")
    room = "chat:lost"
    async with Client(router.url(), backoff=FAST) as reader:
        await reader.join(room)
        publisher = await WsClient.connect(node.ws_url(0))
        await publisher.join(room)
        await publish_numbered(publisher, room, 3, 0)
        before = await _collect(reader, 3, 10)
        assert [f["seq"] for f in before] == [1, 2, 3]
        old_epoch = before[0]["epoch"]
        await publisher.close()

        redis_server.restart()  # the room's stream state is gone; the worker's sockets stay up
        wait_until(lambda: node.metric(0, "ringcast_bus_connected") == 1.0, 20, "the bus to reconnect")
        os.kill(node.worker_pid(0), signal.SIGKILL)  # force the SDK to resume on a fresh connection
        node.wait_ready(0)
        publisher = await WsClient.connect(node.ws_url(0))
        await publisher.join(room)
        await publish_numbered(publisher, room, 2, 0)
        after = await _collect(reader, 2, 30)
        await publisher.close()
    gap = [f for f in after if f["type"] == "joined"]
    assert len(gap) == 1 and gap[0]["recovered"] is False and gap[0]["reason"] == "epoch_changed"
    assert reader.unrecovered[room]["reason"] == "epoch_changed"
    new_stream = [(f["seq"], f["epoch"]) for f in after if f["type"] == "message"]
    assert [seq for seq, _ in new_stream] == [1, 2] and all(epoch != old_epoch for _, epoch in new_stream)
