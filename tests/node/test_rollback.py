"""Redis comes back with an older copy of a room's state: the epoch changes and everyone is told.

Real redis-server with an RDB snapshot in its own directory, a real node. The
room's seq goes back under the same epoch when Redis restarts from an older
snapshot (or AOF-everysec, or a lagging replica is promoted); without a new
epoch, a member still connected would drop every later message as already
seen, and a resumer would be told nothing.
"""

from __future__ import annotations

import asyncio

from chaos.eventually import eventually
from node.bus_redis import BusKeys
from tests.node.test_resilience import FAST_BUS, expect_text, publish_until_acked
from tests.wsclient import WsClient

KEYS = BusKeys("ringcast:room:", "ringcast:")  # NodeConfig defaults


async def restart_from_snapshot(redis_server) -> None:
    """Stop Redis (SIGTERM, no save: the fixture runs with `--save ""`) and start it on the same dir and port.

    It loads the snapshot the test SAVEd earlier: every write after it is gone.
    """
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)


async def room_seq_in_redis(redis_server, room: str) -> int:
    out = await asyncio.to_thread(redis_server.command, "HGET", KEYS.state_key(room), "seq")
    return int(out.strip() or 0)


async def next_of(client: WsClient, kinds: tuple[str, ...]) -> dict:
    return await client.expect_any(kinds, timeout_s=15)


async def test_after_a_restart_from_an_older_snapshot_members_get_new_messages_and_learn_of_it(
        start_node, redis_server):
    node = start_node(1, *FAST_BUS)
    member = await WsClient.connect(node.ws_url(0))
    publisher = await WsClient.connect(node.ws_url(0), codec="msgpack")
    resumer: WsClient | None = None
    try:
        await member.join("r")
        await publisher.join("r")
        for i in range(1, 4):
            await publish_until_acked(publisher, "r", f"m{i}")
        await asyncio.to_thread(redis_server.command, "SAVE")  # the snapshot holds seq 3
        for i in range(4, 7):
            ack = await publish_until_acked(publisher, "r", f"m{i}")
        old_epoch = ack["epoch"]
        for i in range(1, 7):
            assert (await expect_text(member, f"m{i}"))["seq"] == i

        reconnects = node.metric(0, "ringcast_bus_reconnects_total")
        await restart_from_snapshot(redis_server)
        assert await room_seq_in_redis(redis_server, "r") == 3  # the rollback really happened
        await eventually(lambda: node.metric(0, "ringcast_bus_reconnects_total") > reconnects,
                         what="the worker's bus re-subscribed after the restart", timeout_s=20)

        # A resumer that saw seq 6 is told its position is gone, before and after the next publish.
        resumer = await WsClient.connect(node.ws_url(0))
        await resumer.send({"type": "join", "room": "r", "since": {"seq": 6, "epoch": old_epoch}, "id": "j"})
        joined = await resumer.expect("joined", timeout_s=15)
        assert (joined["recovered"], joined["reason"]) == (False, "epoch_changed")

        after = await publish_until_acked(publisher, "r", "after-restart")
        assert after["epoch"] != old_epoch and after["seq"] == 1  # a new epoch, numbered from 1

        # The member still connected gets the new message, announced as an epoch change right before it.
        notice = await next_of(member, ("joined", "message"))
        assert notice["type"] == "joined" and "id" not in notice
        assert (notice["recovered"], notice["reason"], notice["epoch"]) == (False, "epoch_changed", after["epoch"])
        message = await next_of(member, ("joined", "message"))
        assert (message["type"], message.get("text"), message["epoch"], message["seq"]) == \
            ("message", "after-restart", after["epoch"], 1)
        assert (await expect_text(resumer, "after-restart"))["epoch"] == after["epoch"]

        # A resumer coming after the publish gets the new epoch's kept messages with the same reason.
        late = await WsClient.connect(node.ws_url(0))
        try:
            await late.send({"type": "join", "room": "r", "since": {"seq": 6, "epoch": old_epoch}})
            joined = await late.expect("joined", timeout_s=15)
            assert (joined["recovered"], joined["reason"], joined["epoch"]) == (False, "epoch_changed", after["epoch"])
            assert (await late.expect("message", timeout_s=15))["text"] == "after-restart"
        finally:
            await late.close()
    finally:
        for client in (member, publisher, resumer):
            if client is not None:
                await client.close()
