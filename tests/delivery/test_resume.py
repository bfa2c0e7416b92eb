"""The delivery promise with real workers and a real Redis: resume loses nothing, duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal

from chaos.eventually import eventually
from tests.delivery.resuming import ResumingReader, bus_reconnected, publish_numbered
from tests.wsclient import WsClient

RESUME_FLAGS = (
    "--history-size", "2000", "--history-ttl-s", "600",
    "--shutdown-window-s", "0.3", "--reconnect-jitter-ms", "200",
    "--restart-backoff-base-s", "0.2", "--message-rate-per-s", "1000", "--message-burst", "1000",
    # Readers and publisher sit on different workers on purpose; without this, the node's own ring
    # (a lone node routes among its workers) would send some of them a `moved` hint.
    "--placement-hint", "off",
)
MISSED_WHILE_AWAY = 10  # messages published after every reader lost its connection and before any rejoins


async def _current_epoch(client: WsClient, room: str) -> str:
    await client.send({"type": "history", "room": room, "limit": 1})
    return (await client.expect("history"))["epoch"]


async def _run_with_fault(node, fault, total: int = 150, readers: int = 3):
    """Readers on worker 0, a publisher on worker 1; `fault()` runs a third of the way in.

    The readers may rejoin only once every one of them has lost its connection
    and the publisher has had MISSED_WHILE_AWAY more messages acknowledged, so
    every rejoin has something to replay: without the replay there is a gap.
    """
    room = "chat:resume"
    rejoin_allowed = asyncio.Event()
    members = [ResumingReader([node.ws_url(0), node.ws_url(1)], room, rejoin_allowed) for _ in range(readers)]
    tasks = [asyncio.create_task(m.run(until_seq=total, deadline_s=60)) for m in members]
    await asyncio.wait_for(asyncio.gather(*(m.joined_once.wait() for m in members)), 10)
    publisher = await WsClient.connect(node.ws_url(1))
    await publisher.join(room)
    progress: list[int] = []
    publishing = asyncio.create_task(publish_numbered(publisher, room, total, 0.01, progress=progress))
    await eventually(lambda: len(progress) >= total // 3, what="a third of the messages acknowledged", timeout_s=30)
    await fault()
    await eventually(lambda: all(m.disconnected.is_set() for m in members), what="every reader to lose its connection",
                     timeout_s=30)
    away_from = len(progress)
    await eventually(lambda: len(progress) >= away_from + MISSED_WHILE_AWAY,
                     what="messages acknowledged while the readers are away", timeout_s=30)
    rejoin_allowed.set()
    acked = await asyncio.wait_for(publishing, 60)
    await asyncio.wait_for(asyncio.gather(*tasks), 70)
    await publisher.close()
    return acked, members


def _assert_resumed_everything_once(member: ResumingReader, acked: list[int], cut_by: str) -> None:
    assert member.seqs == acked, (member.gaps, member.duplicates)
    assert member.duplicates == 0 and member.gaps == []
    assert member.joins[0].get("recovered") is None  # the first join had no `since`
    assert member.lost[:1] == [cut_by] and member.reconnects == len(member.lost) == len(member.rejoins)
    for rejoin in member.rejoins:  # every new connection resumed, and the server replayed something
        assert rejoin.recovered is True and rejoin.since["epoch"] == rejoin.joined["epoch"], rejoin
        assert rejoin.since["seq"] < rejoin.joined["seq"], rejoin


async def test_worker_killed_while_publishing_resuming_clients_get_everything_once_in_order(start_node):
    node = start_node(2, *RESUME_FLAGS)
    victim = node.worker_pid(0)

    async def kill_worker_0():
        os.kill(victim, signal.SIGKILL)

    acked, members = await _run_with_fault(node, kill_worker_0)
    assert acked == list(range(1, len(acked) + 1))
    for member in members:
        _assert_resumed_everything_once(member, acked, cut_by="cut")  # killed: the socket just ends


async def test_graceful_worker_shutdown_while_messages_flow_loses_nothing(start_node):
    node = start_node(2, *RESUME_FLAGS)
    victim = node.worker_pid(0)

    async def terminate_worker_0():
        os.kill(victim, signal.SIGTERM)

    acked, members = await _run_with_fault(node, terminate_worker_0)
    for member in members:
        _assert_resumed_everything_once(member, acked, cut_by="reconnect")  # steered away by a `reconnect` notice


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

    connections_before = await asyncio.to_thread(node.metric, 0, "ringcast_bus_reconnects_total")
    await asyncio.to_thread(redis_server.restart)
    await bus_reconnected(node, 0, connections_before)
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
    # since epoch "" with seq 2 names no position of this stream; ask with the real epoch:
    assert joined["recovered"] is False and joined["reason"] == "epoch_changed"
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
