"""A worker hosting thousands of rooms still heartbeats, reports them, and reads its commands.

The room report used to be one `HSET` of `unpack(ARGV, 4)` in the heartbeat
script: past about 4,000 rooms Lua's stack limit failed the whole script, and
with it the read of the worker's command (it would never drain). It is now
written in chunks, and the number of rooms reported is bounded at start.
Real worker, real Redis, rooms joined by a few connections.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from chaos.cluster import REPO
from chaos.eventually import eventually
from common.keys import Keys
from common.records import Command, Heartbeat
from tests.wsclient import WsClient

ROOMS = 10_000  # the most a heartbeat may report; the old script failed past about 4,000
CONNECTIONS = 4
BATCH = 250  # joins in flight per connection


async def join_rooms(client: WsClient, rooms: list[str]) -> None:
    for start in range(0, len(rooms), BATCH):
        batch = rooms[start:start + BATCH]
        for room in batch:
            await client.send({"type": "join", "room": room})
        for _ in batch:
            frame = await client.expect_any(("joined", "error"), timeout_s=30)
            assert frame["type"] == "joined", frame


def heartbeat(redis_server, node_id: str) -> Heartbeat | None:
    raw = redis_server.command("HGET", Keys().heartbeats, node_id).strip()
    return Heartbeat.from_json(raw) if raw else None


async def test_a_worker_with_ten_thousand_rooms_reports_them_all_and_still_follows_its_command(
    start_node, redis_server
):
    node = start_node(
        1, "--heartbeat-max-rooms-reported", str(ROOMS), "--max-rooms-per-connection", str(ROOMS // CONNECTIONS),
        "--new-room-burst", str(ROOMS), "--new-room-rate-per-s", "1000",
        "--message-rate-per-s", "10000", "--message-burst", str(2 * BATCH), "--placement-hint", "off",
    )
    node_id = f"127.0.0.1:{node.port}"
    clients = [await WsClient.connect(node.ws_url()) for _ in range(CONNECTIONS)]
    try:
        names = [f"hb-room-{i}" for i in range(ROOMS)]
        share = ROOMS // CONNECTIONS
        await asyncio.gather(*(join_rooms(c, names[i * share:(i + 1) * share]) for i, c in enumerate(clients)))

        rooms_key = Keys().rooms(node_id)
        await eventually(lambda: int(redis_server.command("HLEN", rooms_key)), equals=ROOMS,
                         what="the heartbeat's room report to hold every room", timeout_s=30)
        assert redis_server.command("HGET", rooms_key, "hb-room-9999").strip() == b"1"
        assert heartbeat(redis_server, node_id).rooms == ROOMS

        # The same round trip reads the worker's command: a drain is followed.
        command = Command(version=1, state="draining", drain_window_s=0.0, drain_timeout_s=5.0, ring_epoch=0)
        redis_server.command("SET", Keys().command(node_id), command.to_json())
        await eventually(lambda: (heartbeat(redis_server, node_id).command_version,
                                  heartbeat(redis_server, node_id).state in ("draining", "drained")),
                         equals=(1, True), what="the worker to read and follow its drain command", timeout_s=30)
    finally:
        for client in clients:
            await client.close()


def test_the_number_of_rooms_a_heartbeat_reports_is_bounded_at_start():
    refused = subprocess.run(
        [sys.executable, "-m", "ringcast_cli", "node", "--bus", "memory", "--workers", "1",
         "--heartbeat-max-rooms-reported", str(ROOMS + 1)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert refused.returncode != 0
    assert "heartbeat_max_rooms_reported must be <= 10000" in refused.stderr + refused.stdout
