"""The load generator itself: it connects, publishes, counts and verifies against a real node.

No timing thresholds: these check that `ringcast bench` delivers what it
claims to measure (every published message counted at every member, nothing
lost, duplicated or out of order) and that its verification does notice a
gap, a duplicate and a late message when the stream has them.
"""

from __future__ import annotations

import asyncio
import json

from chaos.bench import cli as bench
from chaos.load.stats import Tally
from chaos.load.wire import MemberSocket, Window


def _run_bench(tmp_path, *args: str) -> dict:
    code = bench.main([*args, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("# ringcast bench")
    assert code == 0, result
    return result


# The bus liveness ping gives up after --bus-timeout-s of silence from Redis (2 s by default). On a starved
# 2-core machine (other test runs, taskset -c 0) a process can stay unscheduled that long, and the worker
# then drops and re-establishes a healthy subscriber. Bus outages are the resilience tests' and drills'
# subject; this test is about the load generator, so its node does not mistake starvation for one.
NO_FALSE_BUS_OUTAGE = ["--bus-timeout-s", "30"]


def test_fixed_population_counts_every_delivery_and_finds_no_loss(start_node, tmp_path):
    node = start_node(2, *bench.BENCH_NODE_FLAGS, *NO_FALSE_BUS_OUTAGE)
    result = _run_bench(
        tmp_path, "--url", node.ws_url(0), "--url", node.ws_url(1),
        "--pid", str(node.worker_pid(0)), "--pid", str(node.worker_pid(1)),
        "--connections", "60", "--rooms", "3", "--publishers", "3", "--rate", "20",
        "--duration", "2", "--warmup", "0.5", "--procs", "2", "--source-ips", "2", "--sample-every", "4")
    assert result["connections"] == 60 and result["connect_failures"] == 0
    assert result["published"] > 0
    # every message published to a room reaches its 20 members (the publisher included), once, in order
    assert result["unsequenced_publishes"] == 0
    assert result["expected_deliveries"] == result["published"] * 20
    verdict = {k: result[k] for k in ("lost", "surplus", "duplicates", "gaps", "reordered", "closed_by_server")}
    assert verdict == dict.fromkeys(verdict, 0), (verdict, result["miscounted_members"], node.log())
    assert result["delivered"] == result["expected_deliveries"]
    assert result["errors"] == {}
    assert result["latency_samples"] > 0 and result["latency_p99_ms"] is not None
    assert all(rss > 0 for rss in result["server_rss_end_mib"])
    assert result["server_cpu_percent"] is not None


def test_arrival_phases_publish_and_verify(start_node, tmp_path):
    node = start_node(1, *bench.BENCH_NODE_FLAGS, *NO_FALSE_BUS_OUTAGE)
    result = _run_bench(
        tmp_path, "--url", node.ws_url(0), "--phase", "1:20", "--phase", "1:40", "--rooms", "2",
        "--think-min", "0.05", "--think-max", "0.1", "--messages-per-user", "5", "--warmup", "0",
        "--max-users", "200", "--procs", "2", "--sample-every", "3")
    assert result["mode"] == "arrival" and result["connect_failures"] == 0
    assert result["connections"] > 0  # the peak of virtual users joined at once
    assert result["published"] > 0 and result["delivered"] >= result["published"]
    assert result["sampled_frames"] > 0
    assert (result["duplicates"], result["gaps"], result["reordered"]) == (0, 0, 0)
    assert result["errors"] == {}


def _server_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x81, len(payload))) + payload


def _feed(seqs: tuple[int, ...]) -> Tally:
    """Feed one sampled member a stream of these seqs (split mid-frame over two reads); its tally."""
    async def scenario() -> Tally:
        tally = Tally()
        sock = MemberSocket("127.0.0.1", 1, "/ws", "r", True, tally, Window())
        sock.upgraded = True
        sock._control_frame({"type": "joined", "room": "r", "seq": 0, "epoch": "e1"})
        stream = b"".join(_server_frame(b'{"type":"message","room":"r","seq":%d,"epoch":"e1","data":{"t":1}}' % s)
                          for s in seqs)
        sock.data_received(stream[:50])
        sock.data_received(stream[50:])
        return tally

    return asyncio.run(scenario())


def test_member_socket_notices_gap_and_duplicate():
    tally = _feed((1, 2, 4, 4))
    assert tally.frames_total == 4 and tally.sampled_frames == 4
    assert (tally.gaps, tally.gap_messages, tally.duplicates, tally.reordered) == (1, 1, 1, 0)


def test_member_socket_tells_a_late_message_from_a_duplicate():
    tally = _feed((1, 3, 2, 2, 4))
    assert (tally.gaps, tally.reordered, tally.duplicates) == (1, 1, 1)
