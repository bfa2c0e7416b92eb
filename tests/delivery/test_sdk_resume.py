"""The SDK's side of the delivery promise: automatic resume, no duplicates, gaps surfaced."""

from __future__ import annotations

import asyncio
import os
import signal

from chaos.eventually import eventually
from router.client import Client, ConnectionState
from tests.client_helpers import FAST, collect_until
from tests.delivery.resuming import bus_reconnected, publish_numbered
from tests.router.helpers import publish_ring, room_owned_by
from tests.wsclient import WsClient

FLAGS = ("--history-size", "1000", "--restart-backoff-base-s", "0.2",
         "--message-rate-per-s", "1000", "--message-burst", "1000")


async def _acked_at_each_connect(client: Client, progress: list[int], seen: list[int]) -> None:
    """Record how many messages were acknowledged each time the SDK (re)connects."""
    async for change in client.states():
        if change.state is ConnectionState.CONNECTED:
            seen.append(len(progress))


async def test_sdk_resumes_after_its_worker_is_killed_with_every_message_once_in_order(
    redis_server, start_node, start_router
):
    node = start_node(2, *FLAGS)
    ring = await publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url)
    room = room_owned_by(ring, f"127.0.0.1:{node.ports[0]}")
    total = 120
    async with Client(router.url(), backoff=FAST) as reader:
        await reader.join(room)
        assert reader.worker_id == f"127.0.0.1:{node.ports[0]}"
        publisher = await WsClient.connect(node.ws_url(1))
        await publisher.join(room)
        progress: list[int] = []
        acked_at_connect: list[int] = []
        watching = asyncio.create_task(_acked_at_each_connect(reader, progress, acked_at_connect))
        publishing = asyncio.create_task(publish_numbered(publisher, room, total, 0.01, progress=progress))
        collecting = asyncio.create_task(collect_until(reader, total, 60))
        await eventually(lambda: len(progress) >= total // 3, what="a third of the messages acknowledged", timeout_s=30)
        acked_at_kill = len(progress)
        os.kill(node.worker_pid(0), signal.SIGKILL)
        acked = await asyncio.wait_for(publishing, 60)
        frames = await collecting
        watching.cancel()
        await publisher.close()
    messages = [f for f in frames if f["type"] == "message"]
    assert [m["seq"] for m in messages] == acked == list(range(1, total + 1))
    assert [m["data"]["n"] for m in messages] == list(range(total))
    assert not reader.unrecovered and not [f for f in frames if f["type"] == "joined"]
    # It really was cut off and came back while messages were missed, and the restarted worker saw a resume.
    assert acked_at_connect and acked_at_connect[0] > acked_at_kill, (acked_at_kill, acked_at_connect)
    assert await asyncio.to_thread(node.metric, 0, "ringcast_resumes_total", 'outcome="recovered"') >= 1


async def test_sdk_surfaces_a_resume_that_could_not_be_complete(redis_server, start_node, start_router):
    node = start_node(1, *FLAGS)
    await publish_ring(redis_server, node, epoch=1)
    router = start_router("--nodes", f"127.0.0.1:{node.ports[0]}")
    room = "chat:lost"
    async with Client(router.url(), backoff=FAST) as reader:
        await reader.join(room)
        publisher = await WsClient.connect(node.ws_url(0))
        await publisher.join(room)
        await publish_numbered(publisher, room, 3, 0)
        before = await collect_until(reader, 3, 10)
        assert [f["seq"] for f in before] == [1, 2, 3]
        old_epoch = before[0]["epoch"]
        await publisher.close()

        connections_before = await asyncio.to_thread(node.metric, 0, "ringcast_bus_reconnects_total")
        await asyncio.to_thread(redis_server.restart)  # the room's stream state is gone; the worker's sockets stay up
        await bus_reconnected(node, 0, connections_before)
        os.kill(node.worker_pid(0), signal.SIGKILL)  # force the SDK to resume on a fresh connection
        await asyncio.to_thread(node.wait_ready, 0)
        publisher = await WsClient.connect(node.ws_url(0))
        await publisher.join(room)
        await publish_numbered(publisher, room, 2, 0)
        after = await collect_until(reader, 2, 30)
        await publisher.close()
    gap = [f for f in after if f["type"] == "joined"]
    assert len(gap) == 1 and gap[0]["recovered"] is False and gap[0]["reason"] == "epoch_changed"
    assert reader.unrecovered[room]["reason"] == "epoch_changed"
    new_stream = [(f["seq"], f["epoch"]) for f in after if f["type"] == "message"]
    assert [seq for seq, _ in new_stream] == [1, 2] and all(epoch != old_epoch for _, epoch in new_stream)
