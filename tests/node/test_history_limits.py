"""The bounds of history and resume on real workers over a real Redis.

`max_history_page` caps what one `history` request or one resume returns (a
resume that missed more says `too_many_missed` and gets the oldest page);
`max_join_buffer_messages` caps the live messages held for a joiner while its
history is read (past it the joiner is cut off and counted).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess

import psutil
import pytest

from chaos.eventually import eventually
from tests.node.redis_view import clients
from tests.wsclient import WsClient

PAGE = 5  # --max-history-page of these tests


async def publish_acked(client: WsClient, room: str, texts: list[str]) -> list[dict]:
    """Publish each text with an id; the acks, in order."""
    acks = []
    for text in texts:
        await client.send({"type": "message", "room": room, "text": text, "id": text})
        acks.append(await client.expect("ack"))
    return acks


async def history(client: WsClient, **request) -> dict:
    await client.send({"type": "history", **request})
    return await client.expect_any(("history", "error"))


def seqs(frames: list[dict]) -> list[int]:
    return [frame["seq"] for frame in frames]


def redis_ports_of(redis_server, pid: int) -> set[int]:
    """The local ports of process `pid`'s connections to Redis (CLIENT LIST names them addr=IP:PORT)."""
    return {conn.laddr.port for conn in psutil.Process(pid).net_connections("tcp")
            if conn.raddr and conn.raddr.port == redis_server.port}


def client_port(fields: dict[str, str]) -> int:
    return int(fields["addr"].rsplit(":", 1)[1])


async def script_held_for(redis_server, pid: int) -> bool:
    """Whether Redis holds a script (EVAL) of process `pid`, blocked by CLIENT PAUSE."""
    ports = redis_ports_of(redis_server, pid)
    return any("b" in fields["flags"] and fields["cmd"] == "eval" and client_port(fields) in ports
               for fields in await clients(redis_server))


async def pubsub_port(redis_server, pid: int) -> int:
    """The local port of process `pid`'s pub/sub connection to Redis."""
    ports = redis_ports_of(redis_server, pid)
    [port] = [client_port(fields) for fields in await clients(redis_server)
              if "P" in fields["flags"] and client_port(fields) in ports]
    return port


async def bytes_taken_in(local_port: int) -> int:
    """Bytes the kernel has taken in on the connection from `local_port`, read by its process or not.

    From the socket's tcp_info (`ss -i`, bytes_received): it counts while the process is stopped.
    """
    shown = await asyncio.to_thread(subprocess.run, ["ss", "-tinH", "state", "established", f"( sport = :{local_port} )"],
                                    capture_output=True, text=True, check=True)
    taken_in = re.search(r"bytes_received:(\d+)", shown.stdout)  # ss leaves out a count of 0
    return int(taken_in.group(1)) if taken_in else 0


async def test_history_returns_at_most_max_history_page_messages_whatever_the_limit(start_node):
    node = start_node(1, "--max-history-page", str(PAGE))
    client = await WsClient.connect(node.ws_url(0))
    try:
        await client.join("busy")
        epoch = (await publish_acked(client, "busy", [f"m{n}" for n in range(1, 13)]))[-1]["epoch"]

        for request in ({"limit": 50}, {}):  # a limit above the cap, and none (the cap is the default)
            page = await history(client, room="busy", **request)
            assert seqs(page["messages"]) == [8, 9, 10, 11, 12], request  # the latest page
            assert (page["seq"], page["complete"]) == (12, True)
        assert seqs((await history(client, room="busy", limit=3))["messages"]) == [10, 11, 12]  # under the cap

        # From a position, page by page: the first page after it, then the rest.
        pages = [await history(client, room="busy", since={"seq": since, "epoch": epoch}, limit=50)
                 for since in (0, 5, 10)]
        assert [seqs(page["messages"]) for page in pages] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
        assert [page["complete"] for page in pages] == [False, False, True]
    finally:
        await client.close()


async def test_a_resume_that_missed_more_than_a_page_gets_the_oldest_page_then_the_live_stream(start_node):
    node = start_node(1, "--max-history-page", str(PAGE))
    publisher = await WsClient.connect(node.ws_url(0))
    resumer = await WsClient.connect(node.ws_url(0))
    exact = await WsClient.connect(node.ws_url(0))
    try:
        await publisher.join("busy")
        epoch = (await publish_acked(publisher, "busy", [f"m{n}" for n in range(1, 13)]))[-1]["epoch"]

        # It saw seq 2: 10 missed, more than a page.
        await resumer.send({"type": "join", "room": "busy", "since": {"seq": 2, "epoch": epoch}, "id": "r"})
        joined = await resumer.recv()
        assert joined == {"type": "joined", "room": "busy", "seq": 12, "epoch": epoch, "id": "r",
                          "recovered": False, "reason": "too_many_missed"}
        assert seqs([await resumer.recv() for _ in range(PAGE)]) == [3, 4, 5, 6, 7]  # the oldest page
        await publish_acked(publisher, "busy", ["live"])
        live = await resumer.recv()
        assert (live["type"], live["seq"], live["text"]) == ("message", 13, "live")  # then the live stream
        rest = await history(resumer, room="busy", since={"seq": 7, "epoch": epoch})  # the rest, as the docs say
        assert seqs(rest["messages"]) == [8, 9, 10, 11, 12] and rest["complete"] is False  # a page at a time
        assert node.metric(0, "ringcast_resumes_total", 'outcome="too_many_missed"') == 1

        # Exactly a page missed is a full recovery.
        await exact.send({"type": "join", "room": "busy", "since": {"seq": 13 - PAGE, "epoch": epoch}})
        joined = await exact.recv()
        assert (joined["type"], joined["seq"], joined["recovered"], "reason" in joined) == ("joined", 13, True, False)
        assert seqs([await exact.recv() for _ in range(PAGE)]) == [9, 10, 11, 12, 13]
        assert node.metric(0, "ringcast_resumes_total", 'outcome="recovered"') == 1
    finally:
        for client in (publisher, resumer, exact):
            await client.close()


async def test_a_joiner_that_falls_behind_during_its_history_read_is_cut_off_and_counted(start_node, redis_server):
    """Live messages reach worker 0 while a joiner's history read is still unanswered.

    Redis holds the joiner's read (CLIENT PAUSE WRITE also holds scripts), worker 0 is
    frozen (SIGSTOP), Redis answers the read and a publisher on worker 1 sends three
    messages, then worker 0 thaws: both replies wait in its sockets, and its event loop
    runs every socket's reads of one poll before any coroutine they wake resumes, so the
    three messages reach the hub while the joiner is still reading history. A buffer of 2
    overflows on the third.
    """
    node = start_node(2, "--max-join-buffer-messages", "2", "--bus-timeout-s", "30",
                      "--control-heartbeat-interval-s", "0")  # no heartbeat scripts held by the pause
    worker0, worker1 = node.worker_pid(0), node.worker_pid(1)

    async def redis_command(*args: str) -> bytes:
        return await asyncio.to_thread(redis_server.command, *args)

    member = await WsClient.connect(node.ws_url(0))
    publisher = await WsClient.connect(node.ws_url(1))
    joiner = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("surge")
        await publisher.join("surge")

        await redis_command("CLIENT", "PAUSE", "30000", "WRITE")  # expires by itself if the test dies
        try:
            await joiner.send({"type": "join", "room": "surge", "id": "late"})
            await eventually(lambda: script_held_for(redis_server, worker0), what="the joiner's history read held")
            os.kill(worker0, signal.SIGSTOP)
            try:
                await eventually(lambda: psutil.Process(worker0).status() == psutil.STATUS_STOPPED,
                                 what="worker 0 stopped")
                pubsub_ports = [await pubsub_port(redis_server, pid) for pid in (worker0, worker1)]
                before = [await bytes_taken_in(port) for port in pubsub_ports]
                await redis_command("CLIENT", "UNPAUSE")  # the read is answered into worker 0's socket
                for text in ("one", "two", "three"):
                    await publisher.send({"type": "message", "room": "surge", "text": text})
                # Worker 1 got them from the same PUBLISHes that write them to worker 0's socket...
                assert [(await publisher.expect("message"))["text"] for _ in range(3)] == ["one", "two", "three"]

                async def pushes_taken_in_by_both() -> bool:
                    now = [await bytes_taken_in(port) for port in pubsub_ports]
                    worker0_in, worker1_in = (after - start for after, start in zip(now, before))
                    return worker1_in > 0 and worker0_in == worker1_in

                # ...but Redis may write worker 1's socket first and be preempted before worker 0's.
                await eventually(pushes_taken_in_by_both, what="the three pushes in worker 0's socket too")
            finally:
                os.kill(worker0, signal.SIGCONT)
        finally:
            await redis_command("CLIENT", "UNPAUSE")

        try:  # cut without a close frame, before `joined`
            joined = await joiner.expect("joined", timeout_s=15)
        except ConnectionError:
            pass
        else:  # say what the worker sent instead, and what worker 0's own counters saw
            counters = {name: node.metric(0, name) for name in (  # unlabelled: always exposed
                "ringcast_bus_messages_received_total", "ringcast_messages_delivered_total")}
            pytest.fail(f"the joiner was not cut: {joined}; worker 0's counters {counters}")
        assert joiner.ws.close_code == 1006
        await eventually(lambda: node.metric(0, "ringcast_connections_closed_total", 'reason="join_buffer_overflow"'),
                         equals=1, what="the joiner cut and counted")
        # The room's members are not affected.
        assert [(await member.expect("message"))["text"] for _ in range(3)] == ["one", "two", "three"]
        # Reconnected, the joiner resumes (here from the start) and misses nothing.
        await joiner.close()
        joiner = await WsClient.connect(node.ws_url(0))
        await joiner.send({"type": "join", "room": "surge", "since": {"seq": 0, "epoch": ""}})
        joined = await joiner.expect("joined")
        assert (joined["seq"], joined["recovered"]) == (3, True)
        assert [(await joiner.expect("message"))["text"] for _ in range(3)] == ["one", "two", "three"]
    finally:
        for client in (member, publisher, joiner):
            await client.close()
