"""/metrics of a real worker: every documented name is exposed, and the counters move with traffic."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from chaos.eventually import eventually
from tests.wsclient import WsClient

OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_metric_names() -> list[str]:
    """The metric names of the table in docs/operations.md (first column, backquoted)."""
    names = []
    for line in OPERATIONS_DOC.read_text().splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`((?:ringcast|process)_[a-z_]+)", line.split("|")[1])
    return names


async def test_every_documented_metric_is_exposed(start_node):
    node = start_node(1)
    text = node.metrics(0)
    names = documented_metric_names()
    assert len(names) >= 20 and "ringcast_slow_consumer_disconnects_total" in names
    missing = [name for name in names if f"# TYPE {name} " not in text]
    assert missing == []
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name in names:
        if name.endswith("_total"):
            assert types[name] == "counter", name
        if name.endswith("_seconds"):
            assert types[name] == "histogram", name
    assert node.metric(0, "process_resident_memory_bytes") > 0
    assert node.metric(0, "ringcast_worker_info", f'worker="127.0.0.1:{node.port}"') == 1


async def test_counters_move_with_traffic(start_node):
    node = start_node(1, "--max-connections", "3")
    a = await WsClient.connect(node.ws_url(0))
    b = await WsClient.connect(node.ws_url(0), codec="msgpack")
    try:
        assert node.metric(0, "ringcast_connections") == 2
        assert node.metric(0, "ringcast_connections_opened_total") == 2
        await a.join("m")
        await b.join("m")
        assert node.metric(0, "ringcast_rooms_hosted") == 1
        for i in range(3):
            await a.send({"type": "message", "room": "m", "text": f"t{i}", "id": i})
            await a.expect("ack")
        for i in range(3):
            await b.expect("message")
        await a.send({"type": "ping"})
        await a.expect("pong")
        await a.send({"type": "nonsense"})
        await a.expect("error")
        await b.send({"type": "leave", "room": "nope"})
        await b.expect("error")

        assert node.metric(0, "ringcast_messages_received_total", 'type="join"') == 2
        assert node.metric(0, "ringcast_messages_received_total", 'type="publish"') == 3
        assert node.metric(0, "ringcast_messages_received_total", 'type="ping"') == 1
        assert node.metric(0, "ringcast_messages_received_total", 'type="leave"') == 1
        assert node.metric(0, "ringcast_messages_received_total", 'type="invalid"') == 2
        assert node.metric(0, "ringcast_messages_published_total") == 3
        assert node.metric(0, "ringcast_bus_messages_received_total") == 3
        assert node.metric(0, "ringcast_messages_delivered_total") == 6  # 3 messages x 2 members
        assert node.metric(0, "ringcast_errors_total", 'code="UNKNOWN_TYPE"') == 1
        assert node.metric(0, "ringcast_errors_total", 'code="NOT_JOINED"') == 1
        assert node.metric(0, "ringcast_bus_publish_seconds_count") == 3
        assert node.metric(0, "ringcast_message_handling_seconds_count") == 8  # every frame handled, errors included
        assert node.metric(0, "ringcast_bus_connected") == 1

        # Closed, by reason: one client close, one refused as worker-full (not counted as opened).
        third = await WsClient.connect(node.ws_url(0))
        async with aiohttp.ClientSession() as session:
            full = await session.ws_connect(node.ws_url(0))
            await full.receive(timeout=10)
            assert full.close_code == 1013
        await third.close()
        await a.close()
        # A client's close is counted when the worker's handler for it ends, after the gauges are updated.
        await eventually(lambda: node.metric(0, "ringcast_connections_closed_total", 'reason="client"'), equals=2,
                         what="two connections closed by their client")
        assert node.metric(0, "ringcast_connections_rejected_total", 'reason="WORKER_FULL"') == 1
        assert node.metric(0, "ringcast_connections_opened_total") == 3
        assert node.metric(0, "ringcast_connections") == 1
        assert node.metric(0, "ringcast_rooms_hosted") == 1  # b is still in "m"
        await eventually(lambda: node.metric(0, "ringcast_event_loop_lag_seconds_count") > 0,
                         what="the loop lag sampled (every 250 ms)")
    finally:
        await a.close()
        await b.close()
