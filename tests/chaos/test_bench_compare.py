"""The yardstick of issue 12: the tutorial's-server dialect, the ratios, and a real alternating sitting.

The tutorial's server itself (../shared/seed_server, Node.js) is not part of
the repository and is not on CI's machine, so nothing here starts it: the
marker dialect is checked by feeding the load generator's socket the exact
frames that server sends, the arithmetic by hand-made rows, and the
alternation end to end with ringcast on both sides. No timing thresholds.
"""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.bench import cli as bench
from chaos.bench import compare
from chaos.load.stats import Tally
from chaos.load.wire import SeedMemberSocket, Window, encode_marker, parse_marker, seed_message_frame

NO_FALSE_BUS_OUTAGE = "--bus-timeout-s=30"  # see tests/chaos/test_bench.py: starvation is not a bus outage here


# --- the marker and the seed dialect -----------------------------------------

@given(st.integers(0, 10**6), st.integers(0, 10**9), st.integers(0, 2**63))
def test_marker_round_trips(publisher, number, sent_ns):
    assert parse_marker(encode_marker(publisher, number, sent_ns)) == (publisher, number, sent_ns)


def test_marker_rejects_other_texts():
    for text in ("hello", "1:2", "1:2:3:4", "a:2:3", "1:-2:3", "", "1:²:3", None, 12, {"t": 1}):
        assert parse_marker(text) is None, text


def _unmask(frame: bytes) -> bytes:
    assert frame[0] == 0x81 and frame[1] & 0x80  # final text frame, masked as a client must
    length, pos = frame[1] & 0x7F, 2
    if length == 126:
        length, pos = int.from_bytes(frame[2:4], "big"), 4
    key, body = frame[pos:pos + 4], frame[pos + 4:]
    assert len(body) == length
    return bytes(b ^ key[i % 4] for i, b in enumerate(body))


def test_seed_publish_is_the_tutorials_message_frame_with_the_marker_as_text():
    frame = orjson.loads(_unmask(seed_message_frame("lobby", 123456789, 41, 7)))
    assert frame == {"type": "message", "room": "lobby", "text": "7:41:123456789"}


def _seed_frame(publisher: int, number: int, sent_ns: int = 1, room: str = "r") -> bytes:
    # what server.js sends a member: JSON.stringify({type, room, text, serverId, timestamp})
    payload = json.dumps({"type": "message", "room": room, "text": encode_marker(publisher, number, sent_ns),
                          "serverId": "host-1", "timestamp": 1}, separators=(",", ":")).encode()
    assert len(payload) < 126
    return bytes((0x81, len(payload))) + payload


def _feed_seed(frames: list[bytes], publisher_id: int | None = None,
               late_join: bool = False) -> tuple[Tally, SeedMemberSocket]:
    async def scenario():
        tally = Tally()
        sock = SeedMemberSocket("127.0.0.1", 1, "/", "r", True, tally, Window(), late_join)
        sock.publisher_id = publisher_id
        sock.upgraded = True
        stream = b"".join(frames)
        sock.data_received(stream[:37])  # split mid-frame
        sock.data_received(stream[37:])
        return tally, sock

    return asyncio.run(scenario())


def test_seed_member_checks_order_per_publisher_by_marker():
    # publisher 7: 0 1 3 3 2 (a gap, a duplicate, then the late one); publisher 9 interleaved, in order
    frames = [_seed_frame(7, 0), _seed_frame(9, 0), _seed_frame(7, 1), _seed_frame(7, 3), _seed_frame(9, 1),
              _seed_frame(7, 3), _seed_frame(7, 2), _seed_frame(9, 2)]
    tally, sock = _feed_seed(frames, publisher_id=9)
    assert tally.frames_total == 8 and sock.received == 8 and tally.sampled_frames == 8
    assert (tally.gaps, tally.gap_messages, tally.duplicates, tally.reordered) == (1, 1, 1, 1)
    assert sock.own_received == 3  # publisher 9's own messages came back
    assert sum(tally.latency_all.values()) == 8
    assert tally.errors == {}


def test_seed_member_that_joined_a_live_room_starts_each_stream_at_what_it_first_sees():
    frames = [_seed_frame(7, 5), _seed_frame(7, 6), _seed_frame(9, 40), _seed_frame(9, 42)]
    late, _ = _feed_seed(frames, late_join=True)  # arrival mode: users join while others publish
    assert (late.gaps, late.gap_messages, late.duplicates) == (1, 1, 0)  # only 40 -> 42
    strict, _ = _feed_seed(frames)  # a fixed population joined before anyone published: 0 is owed
    assert (strict.gaps, strict.gap_messages) == (3, 46)


def test_seed_member_counts_a_foreign_text_and_the_servers_error_frame():
    foreign = b'{"type":"message","room":"r","text":"hi there","serverId":"x","timestamp":1}'
    error = b'{"error":"INVALID_MESSAGE_FORMAT"}'
    tally, sock = _feed_seed([bytes((0x81, len(foreign))) + foreign, bytes((0x81, len(error))) + error])
    assert tally.frames_total == 1  # the foreign message is a delivery, but not one of ours to verify
    assert tally.errors == {"unmarked": 1, "INVALID_MESSAGE_FORMAT": 1}
    assert sock.refused == 1


def test_final_positions_sum_publishes_for_the_seed_and_take_the_highest_seq_for_ringcast():
    positions = {0: {"a": 5, "b": 2}, 1: {"a": 7}}
    url = [bench.WorkerUrl("127.0.0.1", 1, "/")]
    seed = bench.Coordinator(bench.build_parser().parse_args(["--server", "seed"]), url, None)
    ringcast = bench.Coordinator(bench.build_parser().parse_args([]), url, None)
    assert seed.final_positions(positions) == {"a": 12, "b": 2}
    assert ringcast.final_positions(positions) == {"a": 7, "b": 2}


# --- refusing clearly --------------------------------------------------------

def test_bench_refuses_a_missing_seed_directory(tmp_path, capsys):
    code = bench.main(["--server", "seed", "--start-cluster", "--seed-dir", str(tmp_path / "nowhere")])
    assert code == 2
    assert "the tutorial's server is not at" in capsys.readouterr().err
    assert compare.main(["--seed-dir", str(tmp_path / "nowhere"), "--rounds", "1"]) == 2


def test_compare_refuses_a_worker_count_hidden_in_a_node_flag(capsys):
    for flags in (["--node-arg=--workers=1"], ["--against", "ringcast", "--b-node-arg=--workers"]):
        with pytest.raises(SystemExit) as refused:
            compare.main([*flags, "--rounds", "1"])
        assert refused.value.code == 2
        assert "set the worker count with --workers" in capsys.readouterr().err


def test_bench_refuses_without_node(tmp_path, capsys, monkeypatch):
    (tmp_path / "server.js").write_text("")
    (tmp_path / "start.sh").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code = bench.main(["--server", "seed", "--start-cluster", "--seed-dir", str(tmp_path)])
    assert code == 2
    assert "`node` is not on PATH" in capsys.readouterr().err


# --- the arithmetic ----------------------------------------------------------

def _row(scenario, side, round_, **figures):
    row = {"scenario": scenario, "side": side, "round": round_}
    row.update({key: None for key, _, _ in compare.METRICS})
    row.update(figures)
    return row


def test_ratios_are_paired_by_round_with_their_spread():
    rows = [
        _row("many-rooms", "ringcast", 1, server_cpu_us_per_delivery=20.0, delivered_per_s=40_000.0, faults=0),
        _row("many-rooms", "seed", 1, server_cpu_us_per_delivery=40.0, delivered_per_s=40_000.0, faults=0),
        _row("many-rooms", "ringcast", 2, server_cpu_us_per_delivery=30.0, delivered_per_s=36_000.0, faults=0),
        _row("many-rooms", "seed", 2, server_cpu_us_per_delivery=25.0, delivered_per_s=40_000.0, faults=0),
        _row("many-rooms", "ringcast", 3, server_cpu_us_per_delivery=21.0, delivered_per_s=40_000.0, faults=0),
        _row("many-rooms", "seed", 3, server_cpu_us_per_delivery=30.0, delivered_per_s=40_000.0, faults=0),
    ]
    summary = compare.summarize(rows, "ringcast", "seed")["many-rooms"]
    cpu = summary["server_cpu_us_per_delivery"]
    assert cpu["a"]["median"] == 21.0 and cpu["b"]["median"] == 30.0
    # per round: 0.5, 1.2, 0.7 -> median 0.7 (not 21/30 of the medians by accident: that is 0.7 too, so check range)
    assert cpu["ratio"]["values"] == [0.5, 1.2, 0.7]
    assert (cpu["ratio"]["min"], cpu["ratio"]["median"], cpu["ratio"]["max"]) == (0.5, 0.7, 1.2)
    assert summary["delivered_per_s"]["ratio"]["values"] == [1.0, 0.9, 1.0]
    assert summary["faults"]["ratio"] is None  # 0/0 is no ratio
    assert summary["latency_p99_ms"]["a"] is None  # nothing measured, nothing invented
    table = compare.markdown_summary(compare.summarize(rows, "ringcast", "seed"), "ringcast", "seed")
    assert "| server CPU per delivery | 21.0 µs (20.0–30.0) | 30.0 µs (25.0–40.0) | 0.70 (0.50–1.20) |" in table


def test_a_run_fails_the_saturation_criterion_on_latency_shortfall_or_loss():
    good = {"connect_failures": 0, "lost": 0, "duplicates": 0, "gaps": 0, "reordered": 0, "closed_by_server": 0,
            "latency_p99_ms": 50.0, "delivered_per_s": 39_000.0}
    assert compare.run_failure(good, 40_000) is None
    assert "p99" in compare.run_failure({**good, "latency_p99_ms": 100.1}, 40_000)
    assert "delivered" in compare.run_failure({**good, "delivered_per_s": 37_000.0}, 40_000)
    assert "lost 3" in compare.run_failure({**good, "lost": 3}, 40_000)
    assert "connect failures" in compare.run_failure({**good, "connect_failures": 1}, 40_000)


def test_saturation_point_is_the_last_rate_held_before_the_first_failure():
    steps = [{"offered_per_s": 100.0, "failure": None}, {"offered_per_s": 125.0, "failure": None},
             {"offered_per_s": 156.0, "failure": "p99 300 ms > 100 ms"}]
    assert compare.saturation_point(steps) == {"held_per_s": 125.0, "failed_at_per_s": 156.0,
                                               "why": "p99 300 ms > 100 ms", "bounded": False}
    assert compare.saturation_point(steps[:2])["bounded"] is True  # never failed: a lower bound only
    assert compare.saturation_point(steps[2:])["held_per_s"] is None
    table = compare.markdown_saturation(
        {"one-room": {"ringcast": {"point": compare.saturation_point(steps)},
                      "seed": {"point": compare.saturation_point(steps[:1] + steps[2:])}}}, "ringcast", "seed")
    assert "| one-room | 125/s | 100/s | 1.25 |" in table


def test_saturation_search_alternates_retries_a_failure_and_stops_each_side_at_its_first():
    scenario = compare.Scenario("s", 100, 10, 10, 1, 1000.0)  # steps 500, 625, 781.25, 976.5625, ...
    limits = {"A": 700.0, "B": 1000.0}  # each side holds up to its limit...
    flaky = {("B", 500.0)}  # ...except B's first attempt at 500, a spike from someone else
    calls = []

    def run_one(side, offered, label):
        calls.append((side, offered, label))
        first_try = not any(c[0] == side and c[1] == offered for c in calls[:-1])
        failed = offered > limits[side] or (first_try and (side, offered) in flaky)
        return {"offered_per_s": offered, "failure": "p99 too high" if failed else None}

    result = compare.saturation_search(scenario, ("A", "B"), 8, run_one)
    assert [c[2] for c in calls] == ["s-A-sat1a", "s-B-sat1a", "s-B-sat1b", "s-A-sat2a", "s-B-sat2a",
                                     "s-A-sat3a", "s-A-sat3b", "s-B-sat3a", "s-B-sat4a", "s-B-sat5a", "s-B-sat5b"]
    assert result["A"]["point"]["held_per_s"] == 625.0 and result["A"]["point"]["failed_at_per_s"] == 781.25
    assert result["B"]["point"]["held_per_s"] == 976.5625
    assert result["B"]["steps"][0]["attempts"] == ["p99 too high", None]  # the retry held the step
    assert len(compare.saturation_search(scenario, ("A", "B"), 2, run_one)["A"]["steps"]) == 2  # bounded


def test_saturation_search_steps_down_when_the_first_step_fails():
    scenario = compare.Scenario("s", 100, 10, 10, 1, 1000.0)  # starts at 500
    limits = {"A": 300.0, "B": 600.0}

    def run_one(side, offered, label):
        return {"offered_per_s": offered, "failure": "p99 too high" if offered > limits[side] else None}

    result = compare.saturation_search(scenario, ("A", "B"), 8, run_one)
    assert [s["offered_per_s"] for s in result["A"]["steps"]] == [500.0, 400.0, 320.0, 256.0]
    assert result["A"]["point"] == {"held_per_s": 256.0, "failed_at_per_s": 320.0, "why": "p99 too high",
                                    "bounded": False}
    assert result["B"]["point"]["held_per_s"] == 500.0 and result["B"]["point"]["failed_at_per_s"] == 625.0


def test_scenarios_offer_the_issues_deliveries():
    one_room, many = compare.SCENARIOS["one-room"], compare.SCENARIOS["many-rooms"]
    assert (one_room.connections, one_room.rooms, one_room.ringcast_workers) == (2000, 1, 1)
    assert one_room.rate_per_publisher(one_room.offered_per_s) * one_room.publishers * 2000 == 120_000
    assert (many.connections, many.rooms, many.publishers, many.ringcast_workers) == (5000, 500, 500, 2)
    assert many.rate_per_publisher(many.offered_per_s) == 8.0  # 500 publishers x 10 members x 8 msg/s = 40,000/s


def test_profile_summary_ranks_own_and_inclusive_frames():
    loop = "main (w.py:1);Runner.run (asyncio/runners.py:118)"
    raw = (f"{loop};serve (w.py:10);serve (w.py:11);flush (outbox.py:5) 60\n"  # recursion counts once
           f"{loop};serve (w.py:12);publish (bus.py:7) 20\n"
           "serve (w.py:12);publish (bus.py:9) 10\n"  # a coroutine resumed from C: no loop frames above it
           f"{loop} 10\n")
    summary = compare.summarize_raw_profile(raw)
    assert summary["samples"] == 100
    assert summary["own"][0] == ("flush (outbox.py)", 60.0)
    assert dict(summary["inclusive"])["serve (w.py)"] == 90.0  # two lines of one function merged
    assert dict(summary["own"])["Runner.run (runners.py)"] == 10.0  # time in the loop's C code
    inclusive = dict(summary["inclusive"])
    assert "main (w.py)" not in inclusive and "Runner.run (runners.py)" not in inclusive  # above the loop: no finding


# --- a real sitting, ringcast on both sides ----------------------------------

def test_compare_alternates_two_real_servers_and_reports_ratios(tmp_path):
    code = compare.main([
        "--against", "ringcast", "--scenario", "many-rooms", "--connections", "40", "--rooms", "4",
        "--publishers", "4", "--offered", "400", "--rounds", "1", "--duration", "1", "--warmup", "0.3",
        "--procs", "2", f"--node-arg={NO_FALSE_BUS_OUTAGE}", f"--b-node-arg={NO_FALSE_BUS_OUTAGE}",
        "--workers", "1", "--saturation", "--sat-max-steps", "1", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["scenarios"][0]["ringcast_workers"] == 1  # --workers replaces the scenario's 2
    assert (tmp_path / "compare.md").read_text().startswith("# ringcast bench compare: ringcast vs ringcast-b")
    # A then B, each a real run of the scenario's population at 4 publishers x 10 msg/s x 10 members
    assert [(r["side"], r["round"]) for r in report["rows"]] == [("ringcast", 1), ("ringcast-b", 1)]
    for row in report["rows"]:
        assert row["connections"] == 40 and row["connect_failures"] == 0 and row["workers"] == 1
        assert row["faults"] == 0 and row["closed_by_server"] == 0, row
        assert row["delivered_per_s"] > 0 and row["server_cpu_us_per_delivery"] is not None
        assert row["redis_cpu_us_per_publish"] is not None
        # the split of the server's CPU: user space and kernel, each measured (in clock ticks: a short light
        # run may see none of one), adding up to the whole
        user, system = row["server_user_us_per_delivery"], row["server_system_us_per_delivery"]
        assert user >= 0 and system >= 0
        assert abs(user + system - row["server_cpu_us_per_delivery"]) <= 0.02, row
    ratios = report["summary"]["many-rooms"]["delivered_per_s"]["ratio"]
    assert ratios["n"] == 1 and ratios["median"] > 0
    saturation = report["saturation"]["many-rooms"]
    assert [len(saturation[side]["steps"]) for side in ("ringcast", "ringcast-b")] == [1, 1]
    assert saturation["ringcast"]["steps"][0]["offered_per_s"] == 200.0  # half the offered rate, the first step
