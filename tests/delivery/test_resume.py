"""The delivery promise with real workers and a real Redis: resume loses nothing, duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal

from chaos.cluster import wait_until
from tests.delivery.resuming import ResumingReader, publish_numbered
from tests.wsclient import WsClient

RESUME_FLAGS = (
    "--history-size", "2000", "--history-ttl-s", "600",
    "--shutdown-window-s", "0.3", "--reconnect-jitter-ms", "200",
    "--restart-backoff-base-s", "0.2", "--message-rate-per-s", "1000", "--message-burst", "1000",
)


async def _current_epoch(client: WsClient, room: str) -> str:
    await client.send({"type": "history", "room": room, "limit": 1})
    return (await client.expect("history"))["epoch"]


async def _run_with_fault(node, fault, total: int = 150, readers: int = 3):
    """Readers on worker 0, a publisher on worker 1; `fault()` runs a third of the way in."""
    room = "chat:resume"
    members = [ResumingReader([node.ws_url(0), node.ws_url(1)], room) for _ in range(readers)]
    tasks = [asyncio.create_task(m.run(until_seq=total, deadline_s=60)) for m in members]
    await asyncio.wait_for(asyncio.gather(*(m.joined_once.wait() for m in members)), 10)
    publisher = await WsClient.connect(node.ws_url(1))
    await publisher.join(room)
    progress: list[int] = []
    publishing = asyncio.create_task(publish_numbered(publisher, room, total, 0.01, progress=progress))
    while len(progress) < total // 3:
        await asyncio.sleep(0.01)
    await fault()
    acked = await asyncio.wait_for(publishing, 60)
    await asyncio.wait_for(asyncio.gather(*tasks), 70)
    await publisher.close()
    return acked, members


async def test_worker_killed_while_publishing_resuming_clients_get_everything_once_in_order(start_node):
    node = start_node(2, *RESUME_FLAGS)
    victim = node.worker_pid(0)

    async def kill_worker_0():
        os.kill(victim, signal.SIGKILL)

    acked, members = await _run_with_fault(node, kill_worker_0)
    assert acked == list(range(1, len(acked) + 1))
    for member in members:
        assert member.seqs == acked, (member.gaps, member.duplicates)
        assert member.duplicates == 0 and member.gaps == []
        assert member.reconnects >= 1  # the fault really cut it off
        assert all(j.get("recovered", True) for j in member.joins), member.joins


async def test_graceful_worker_shutdown_while_messages_flow_loses_nothing(start_node):
    node = start_node(2, *RESUME_FLAGS)
    victim = node.worker_pid(0)

    async def terminate_worker_0():
        os.kill(victim, signal.SIGTERM)

    acked, members = await _run_with_fault(node, terminate_worker_0)
    for member in members:
        assert member.seqs == acked
        assert member.duplicates == 0 and member.gaps == []
        assert member.reconnects >= 1
        assert all(j.get("recovered", True) for j in member.joins), member.joins


async def test_redis_restarted_empty_resume_says_not_recovered_and_carries_on(start_node, redis_server):
    node = start_node(1, *RESUME_FLAGS)
    room = "chat:epoch"
    publisher = await WsClient.connect(node.ws_url(0))
    await publisher.join(room)
    before = await publish_numbered(publisher, room, 5, 0)
    reader = await WsClient.connect(node.ws_url(0))
    joined = await reader.join(room)
    old_epoch = joined["epoch"]
    assert joined["seq"] == 5
    await reader.close()

    redis_server.restart()
    wait_until(lambda: node.metric(0, "ringcast_bus_connected") == 1.0, 20, "the worker's bus to reconnect")
    after = await publish_numbered(publisher, room, 3, 0)
    assert before == [1, 2, 3, 4, 5] and after == [1, 2, 3]  # a new epoch starts at 1

    resumed = await WsClient.connect(node.ws_url(0))
    await resumed.send({"type": "join", "room": room, "since": {"seq": 5, "epoch": old_epoch}})
    rejoined = await resumed.expect("joined")
    assert rejoined["recovered"] is False and rejoined["reason"] == "epoch_changed"
    assert rejoined["epoch"] != old_epoch and rejoined["seq"] == 3
    replayed = [await resumed.expect("message") for _ in range(3)]  # the new epoch's kept messages
    assert [m["seq"] for m in replayed] == [1, 2, 3]
    await publish_numbered(publisher, room, 1, 0)
    live = await resumed.expect("message")
    assert (live["seq"], live["epoch"]) == (4, rejoined["epoch"])
    await resumed.close()
    await publisher.close()


async def test_resume_reports_truncated_history_and_delivers_what_is_kept(start_node):
    node = start_node(1, "--history-size", "5")
    room = "news"
    publisher = await WsClient.connect(node.ws_url(0))
    first = await publisher.join(room)
    await publish_numbered(publisher, room, 12, 0)
    reader = await WsClient.connect(node.ws_url(0))
    await reader.send({"type": "join", "room": room, "since": {"seq": 2, "epoch": ""}})
    joined = await reader.expect("joined")
    assert first["seq"] == 0 and joined["seq"] == 12
    assert joined["recovered"] is False and joined["reason"] in ("history_truncated", "epoch_changed")
    # since epoch "" with seq 2 names no position of this stream; ask with the real epoch:
    reader2 = await WsClient.connect(node.ws_url(0))
    await reader2.send({"type": "join", "room": room, "since": {"seq": 2, "epoch": joined["epoch"]}})
    joined2 = await reader2.expect("joined")
    assert joined2["recovered"] is False and joined2["reason"] == "history_truncated"
    kept = [await reader2.expect("message") for _ in range(5)]
    assert [m["seq"] for m in kept] == [8, 9, 10, 11, 12]
    for client in (publisher, reader, reader2):
        await client.close()


async def test_no_history_rooms_publish_plainly_and_say_so(start_node):
    node = start_node(1, "--history-rule", "cursor:*=0:0")
    publisher = await WsClient.connect(node.ws_url(0))
    joined = await publisher.join("cursor:doc")
    await publish_numbered(publisher, "cursor:doc", 3, 0)
    epoch = await _current_epoch(publisher, "cursor:doc")
    reader = await WsClient.connect(node.ws_url(0))
    await reader.send({"type": "join", "room": "cursor:doc", "since": {"seq": 1, "epoch": epoch}})
    rejoined = await reader.expect("joined")
    assert joined["seq"] == 0 and rejoined["seq"] == 3
    assert rejoined["recovered"] is False and rejoined["reason"] == "no_history"
    await reader.send({"type": "history", "room": "cursor:doc"})
    page = await reader.expect("history")
    assert page["messages"] == [] and page["complete"] is False
    await reader.close()
    await publisher.close()


async def test_history_request_pages(start_node):
    node = start_node(1, "--history-size", "50")
    client = await WsClient.connect(node.ws_url(0))
    await client.join("log")
    await publish_numbered(client, "log", 10, 0)
    await client.send({"type": "history", "room": "log", "limit": 3, "id": "h1"})
    latest = await client.expect("history")
    assert [m["seq"] for m in latest["messages"]] == [8, 9, 10] and latest["complete"] and latest["id"] == "h1"
    epoch = latest["epoch"]
    await client.send({"type": "history", "room": "log", "since": {"seq": 2, "epoch": epoch}, "limit": 4})
    page = await client.expect("history")
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5, 6] and page["complete"] is False
    assert page["messages"][0]["data"] == {"n": 2}
    await client.close()


async def test_embedded_memory_bus_resumes_too(start_node):
    node = start_node(1, "--history-size", "10", bus="memory")
    publisher = await WsClient.connect(node.ws_url(0))
    joined = await publisher.join("room")
    await publish_numbered(publisher, "room", 4, 0)
    epoch = await _current_epoch(publisher, "room")
    reader = await WsClient.connect(node.ws_url(0))
    await reader.send({"type": "join", "room": "room", "since": {"seq": 1, "epoch": epoch}})
    rejoined = await reader.expect("joined")
    assert joined["seq"] == 0 and rejoined["recovered"] is True
    assert [(await reader.expect("message"))["seq"] for _ in range(3)] == [2, 3, 4]
    await reader.close()
    await publisher.close()
