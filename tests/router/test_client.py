"""The client SDK against real workers and a real router: join/publish/receive in both
codecs, following `moved` to the room's owner, and surviving a SIGKILLed worker."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from chaos.cluster import NodeProcess, free_port, free_port_range
from chaos.eventually import eventually
from router.client import Client, ConnectionState, StateChange
from router.membership import ring_key
from router.ring import Member, Ring
from tests.client_helpers import FAST, next_message
from tests.router.helpers import publish_ring, room_owned_by
from tests.wsclient import WsClient


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_join_publish_and_receive_through_the_router(redis_server, start_node, start_router, codec):
    node = start_node(2)
    ring = await publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url)
    async with Client(router.url(), codec=codec, backoff=FAST) as client:
        joined = await client.join("lobby")
        assert joined["type"] == "joined" and joined["room"] == "lobby"
        assert client.worker_id == ring.owner_id("lobby")  # placed on the room's owner
        ack = await client.publish("lobby", "hello")
        message = await next_message(client)
        assert (message["text"], message["seq"]) == ("hello", ack["seq"])
        await client.publish("lobby", data={"n": [1, 2]})
        assert (await next_message(client))["data"] == {"n": [1, 2]}
        assert client.position("lobby").seq == ack["seq"] + 1


async def test_follows_moved_to_the_rooms_owner(redis_server, start_node, start_router):
    node = start_node(2)
    ring = await publish_ring(redis_server, node, epoch=2)
    owner_port = node.ports[1]
    room = room_owned_by(ring, f"127.0.0.1:{owner_port}")
    # A stale router that still knows only worker 0 sends the client to the wrong worker.
    stale_router = start_router("--nodes", f"127.0.0.1:{node.ports[0]}")
    changes: list[StateChange] = []
    async with Client(stale_router.url(), backoff=FAST, on_state=changes.append) as client:
        await client.join(room)
        await eventually(lambda: client.worker_id == f"127.0.0.1:{owner_port}"
                         and client.state.state is ConnectionState.CONNECTED, what="the client on the room's owner")
        assert any(c.state is ConnectionState.WAITING and c.reason == "moved" for c in changes)
        assert client.url == f"ws://127.0.0.1:{owner_port}/ws"
        assert client.last_moved[room]["epoch"] == 2
        # The room was re-joined on the owner: it still delivers.
        await client.publish(room, "after the move")
        assert (await next_message(client))["text"] == "after the move"


async def test_a_client_whose_worker_is_killed_reconnects_and_keeps_receiving(redis_server, start_node, start_router):
    node = start_node(2)
    ring = await publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url)
    victim_port = node.ports[0]
    room = room_owned_by(ring, f"127.0.0.1:{victim_port}")
    publisher = await WsClient.connect(node.ws_url(1))
    changes: list[StateChange] = []
    try:
        await publisher.join(room)
        async with Client(router.url(), backoff=FAST, on_state=changes.append) as client:
            await client.join(room)
            assert client.url == f"ws://127.0.0.1:{victim_port}/ws"
            await publisher.send({"type": "message", "room": room, "text": "before"})
            assert (await next_message(client))["text"] == "before"

            old_pid = node.worker_pid(0)
            os.kill(old_pid, signal.SIGKILL)  # no goodbye: the supervisor restarts it
            await eventually(lambda: any(c.reason == "connection_lost" for c in changes), what="the lost connection")
            # Without a control plane the ring still names the victim; the client retries
            # (backing off) until the restarted worker answers, re-joins and receives again.
            await eventually(lambda: client.state.state, equals=ConnectionState.CONNECTED, timeout_s=30,
                             what="the client connected to the restarted worker")
            assert node.worker_pid(0) != old_pid

            async def published_until_received() -> dict:
                while True:
                    await publisher.send({"type": "message", "room": room, "text": "after"})
                    try:
                        return await next_message(client, timeout_s=1.0)
                    except TimeoutError:
                        continue  # the re-join may not be live yet: publish again

            received = await asyncio.wait_for(published_until_received(), 30)
            assert received["text"] == "after"
            waits = [c for c in changes if c.state is ConnectionState.WAITING]
            assert waits and all(0 < c.delay_s <= FAST.cap_s for c in waits)
    finally:
        await publisher.close()


async def test_a_client_whose_worker_dies_lands_on_the_new_owner_once_the_ring_drops_it(
    redis_server, start_node, start_router
):
    # The supervisor waits long before restarting, so only the ring change can bring the client back.
    node = start_node(2, "--restart-backoff-base-s", "60")
    ring = await publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url, "--ring-poll-interval-s", "0.1")
    victim_port, survivor_port = node.ports
    room = room_owned_by(ring, f"127.0.0.1:{victim_port}")
    async with Client(router.url(), backoff=FAST) as client:
        await client.join(room)
        assert client.url == f"ws://127.0.0.1:{victim_port}/ws"
        os.kill(node.worker_pid(0), signal.SIGKILL)
        await eventually(lambda: client.state.state is not ConnectionState.CONNECTED,
                         what="the client to lose its worker")
        # What the control plane does when the worker's heartbeats stop: a ring without it.
        survivor = Ring([Member(f"127.0.0.1:{survivor_port}", f"ws://127.0.0.1:{survivor_port}/ws")], 2)
        redis_server.command("SET", ring_key("ringcast:"), survivor.to_json())
        await eventually(lambda: client.state.state, equals=ConnectionState.CONNECTED, timeout_s=30,
                         what="the client connected again")
        assert client.worker_id == f"127.0.0.1:{survivor_port}"
        await client.publish(room, "on the new owner")
        assert (await next_message(client))["text"] == "on the new owner"


async def test_a_reconnect_notice_is_honoured_with_its_delay(redis_server, start_node, start_router):
    jitter_ms = 800
    node = start_node(1, "--reconnect-jitter-ms", str(jitter_ms), "--shutdown-window-s", "0")
    router = start_router("--nodes", f"127.0.0.1:{node.ports[0]}")
    loop = asyncio.get_running_loop()
    changes: list[tuple[float, StateChange]] = []
    async with Client(router.url(), backoff=FAST, on_state=lambda c: changes.append((loop.time(), c))) as client:
        await client.join("lobby")
        old_pid = node.worker_pid(0)
        os.kill(old_pid, signal.SIGTERM)  # graceful: the worker sends `reconnect` with a delayMs, then closes
        await eventually(lambda: any(c.reason == "reconnect:shutdown" for _, c in changes), timeout_s=15,
                         what="the shutdown notice")
        waited_at, waiting = next((t, c) for t, c in changes if c.reason == "reconnect:shutdown")
        assert waiting.state is ConnectionState.WAITING and 0 <= waiting.delay_s <= jitter_ms / 1000
        # The next attempt does not start before the notice's delay has passed.
        await eventually(lambda: changes[-1][1].state is ConnectionState.CONNECTING
                         or client.state.state is ConnectionState.CONNECTED, timeout_s=15, what="the next attempt")
        next_attempt_at = next(t for t, c in changes if t >= waited_at and c.state is ConnectionState.CONNECTING)
        assert next_attempt_at - waited_at >= waiting.delay_s
        # And it comes back once the supervisor has restarted the worker.
        await eventually(lambda: client.state.state is ConnectionState.CONNECTED and node.worker_pid(0) != old_pid,
                         timeout_s=30, what="the client connected to the restarted worker")
        await client.publish("lobby", "back")
        assert (await next_message(client))["text"] == "back"


async def test_moved_ping_pong_between_disagreeing_workers_is_bounded(redis_server):
    # Two single-worker nodes whose static rings each name only the other: each hints every room away.
    first = free_port()
    second = next(port for port in iter(free_port, None) if port != first)
    nodes = [
        NodeProcess(port=first, workers=1, args=["--redis", redis_server.url, "--nodes", f"127.0.0.1:{second}"]),
        NodeProcess(port=second, workers=1, args=["--redis", redis_server.url, "--nodes", f"127.0.0.1:{first}"]),
    ]
    try:
        for node in nodes:
            node.start()
        changes: list[StateChange] = []
        # Any worker is a valid entry point: it answers /route from its own ring.
        async with Client(f"http://127.0.0.1:{first}", backoff=FAST, max_moved_follows=3,
                          on_state=changes.append) as client:
            await client.join("lobby")
            await eventually(lambda: sum(c.reason == "moved" for c in changes) >= 3
                             and client.state.state is ConnectionState.CONNECTED, timeout_s=20,
                             what="three moves, then connected")
            # It stays put after three moves in a row and keeps working where it is.
            await client.publish("lobby", "settled")
            assert (await next_message(client))["text"] == "settled"
            assert sum(c.reason == "moved" for c in changes) == 3
            assert client.state.state is ConnectionState.CONNECTED
    finally:
        for node in nodes:
            node.stop()


async def test_a_moved_hint_from_an_older_ring_than_the_routers_is_ignored(redis_server, start_router):
    port = free_port_range(2)
    static = f"127.0.0.1:{port},127.0.0.1:{port + 1}"
    # The workers place by a static ring (epoch 0); the router follows a newer ring (epoch 5)
    # that holds only worker 1 (as if worker 0 had been removed and the workers lagged behind).
    node = NodeProcess(port=port, workers=2, args=["--redis", redis_server.url, "--nodes", static]).start()
    try:
        newer = Ring([Member(f"127.0.0.1:{port + 1}", f"ws://127.0.0.1:{port + 1}/ws")], 5)
        redis_server.command("SET", ring_key("newer:"), newer.to_json())
        router = start_router("--redis", redis_server.url, "--key-prefix", "newer:")
        workers_ring = Ring([Member(f"127.0.0.1:{p}", f"ws://127.0.0.1:{p}/ws") for p in (port, port + 1)], 0)
        room = room_owned_by(workers_ring, f"127.0.0.1:{port}")
        changes: list[StateChange] = []
        async with Client(router.url(), backoff=FAST, on_state=changes.append) as client:
            await client.join(room)
            assert client.url == f"ws://127.0.0.1:{port + 1}/ws"
            # Worker 1 hints the room to worker 0 at epoch 0, right after `joined`: frames arrive in
            # order, so once our own message is back the hint has been read (and must be ignored).
            await client.publish(room, "stay")
            assert (await next_message(client))["text"] == "stay"
            assert client.last_moved[room]["epoch"] == 0
            assert not any(c.reason == "moved" for c in changes)
            assert client.state.state is ConnectionState.CONNECTED and client.url == f"ws://127.0.0.1:{port + 1}/ws"
    finally:
        node.stop()


async def test_state_changes_are_also_an_async_iterator(start_router):
    router = start_router("--nodes", "127.0.0.1:9")  # nothing listens on port 9: every connect fails
    async with Client(router.url(), backoff=FAST) as client:
        seen: list[StateChange] = []

        async def watch() -> None:
            async for change in client.states():
                seen.append(change)
                if sum(c.state is ConnectionState.WAITING for c in seen) >= 3:
                    return

        watcher = asyncio.create_task(watch())
        joining = asyncio.create_task(client.join("lobby"))
        await asyncio.wait_for(watcher, 20)
        joining.cancel()
        waits = [c for c in seen if c.state is ConnectionState.WAITING]
        assert [c.attempt for c in waits] == [1, 2, 3]
        assert all(c.reason == "connect_failed" for c in waits)
