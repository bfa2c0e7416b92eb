"""The load generator itself: it connects, publishes, counts and verifies against a real node.

No timing thresholds: these check that `ringcast bench` delivers what it
claims to measure (every published message counted at every member, nothing
lost, duplicated or out of order) and that its verification does notice a
gap and a duplicate when the stream has them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from chaos import bench
from chaos.load_stats import Tally
from chaos.load_wire import MemberSocket, Window


def _run_bench(tmp_path, *args: str) -> dict:
    code = bench.main([*args, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("# ringcast bench")
    assert code == 0, result
    return result


def test_fixed_population_counts_every_delivery_and_finds_no_loss(start_node, tmp_path):
    node = start_node(2, *bench.BENCH_NODE_FLAGS)
    result = _run_bench(
        tmp_path, "--url", node.ws_url(0), "--url", node.ws_url(1),
        "--pid", str(node.worker_pid(0)), "--pid", str(node.worker_pid(1)),
        "--connections", "60", "--rooms", "3", "--publishers", "3", "--rate", "20",
        "--duration", "2", "--warmup", "0.5", "--procs", "2", "--source-ips", "2", "--sample-every", "4")
    assert result["connections"] == 60 and result["connect_failures"] == 0
    assert result["published"] > 0
    # every message published to a room reaches its 20 members (the publisher included), once
    assert result["unsequenced_publishes"] == 0
    assert result["expected_deliveries"] == result["published"] * 20
    assert result["delivered"] == result["expected_deliveries"] - result["lost"] + result["surplus"]
    assert (result["surplus"], result["duplicates"]) == (0, 0)
    # Redis pub/sub is at most once: a worker whose bus subscriber is re-established (it logs so; a
    # starved 2-core machine can delay a PING past bus_timeout_s) misses what was published meanwhile,
    # and the generator must report exactly that as loss and gaps. Otherwise nothing may be missing.
    if "bus subscriber lost" not in Path(node.log_path).read_text():
        assert (result["lost"], result["gaps"]) == (0, 0), result["miscounted_members"]
    else:
        assert result["lost"] > 0 or result["gaps"] == 0
    assert result["latency_samples"] > 0 and result["latency_p99_ms"] is not None
    assert all(rss > 0 for rss in result["server_rss_end_mib"])
    assert result["server_cpu_percent"] is not None


def test_arrival_phases_publish_and_verify(start_node, tmp_path):
    node = start_node(1, *bench.BENCH_NODE_FLAGS)
    result = _run_bench(
        tmp_path, "--url", node.ws_url(0), "--phase", "1:20", "--phase", "1:40", "--rooms", "2",
        "--think-min", "0.05", "--think-max", "0.1", "--messages-per-user", "5", "--warmup", "0",
        "--max-users", "200", "--procs", "2", "--sample-every", "3")
    assert result["mode"] == "arrival" and result["connect_failures"] == 0
    assert result["connections"] > 0  # the peak of virtual users joined at once
    assert result["published"] > 0 and result["delivered"] >= result["published"]
    assert result["sampled_frames"] > 0
    assert (result["duplicates"], result["gaps"]) == (0, 0)


def _server_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x81, len(payload))) + payload


def test_member_socket_notices_gap_and_duplicate():
    """Feed one sampled member a stream with seq 1, 2, 4, 4 (in one read, split mid-frame on another)."""
    async def scenario() -> Tally:
        tally = Tally()
        sock = MemberSocket("127.0.0.1", 1, "/ws", "r", True, tally, Window())
        sock.upgraded = True
        sock._control_frame({"type": "joined", "room": "r", "seq": 0, "epoch": "e1"})
        stream = b"".join(_server_frame(b'{"type":"message","room":"r","seq":%d,"epoch":"e1","data":{"t":1}}' % s)
                          for s in (1, 2, 4, 4))
        sock.data_received(stream[:50])
        sock.data_received(stream[50:])
        return tally

    tally = asyncio.run(scenario())
    assert tally.frames_total == 4 and tally.sampled_frames == 4
    assert (tally.gaps, tally.gap_messages, tally.duplicates) == (1, 1, 1)
