"""The CI-sized drills (`ringcast drill SCENARIO --short`): each must PASS, and its report must show the fault hit.

Each test runs the real command in a subprocess, as an operator would: it
starts its own redis-server and `ringcast node` (and `ringcast control` for
drain), injects the fault under verified load and stops everything it
started. The assertions read the JSON report, so a drill that passed
without really breaking anything (no member cut off, nothing acked) fails
here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chaos.cluster import REPO
from chaos.eventually import eventually_blocking
from tests.chaos.drill_process import drill_process, interrupt

DRILL_TIMEOUT_S = 180  # generous: the drills bound themselves well below this


def run_drill(scenario: str, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "ringcast_cli", "drill", scenario, "--short", "--quiet", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=DRILL_TIMEOUT_S,
    )
    reports = sorted(out.glob(f"drill-{scenario}-*.json"))
    assert reports, f"no JSON report; stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    return proc, json.loads(reports[-1].read_text())


def assert_passed_and_wrote_reports(proc: subprocess.CompletedProcess, report: dict) -> dict:
    assert proc.returncode == 0, f"{report['failures']}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert report["verdict"] == "PASS" and report["failures"] == []
    assert proc.stdout.startswith(f"PASS {report['scenario']}")
    for kind in ("json", "md", "png"):
        assert Path(report["files"][kind]).stat().st_size > 0
    results = report["results"]
    assert results["acked"] > 0 and results["delivered"] >= results["acked"]
    assert results["lost"] == 0 and results["duplicates"] == 0 and results["out_of_order"] == 0
    assert results["recovery_s"] is not None
    return results


def test_kill_worker_short_drill_passes_and_its_members_really_resumed(tmp_path):
    proc, report = run_drill("kill-worker", tmp_path)
    results = assert_passed_and_wrote_reports(proc, report)
    assert results["disconnects"] >= 1  # the SIGKILL cut members off ...
    assert results["resumes"].get("recovered", 0) >= 1  # ... and they came back with `since`
    assert report["details"]["worker_back_s"] is not None  # the supervisor restarted the worker


def test_redis_restart_short_drill_passes_and_the_bus_really_went_down(tmp_path):
    proc, report = run_drill("redis-restart", tmp_path)
    assert_passed_and_wrote_reports(proc, report)
    bus = report["details"]["bus"]
    assert bus["subscriber_reconnects_per_worker"] and min(bus["subscriber_reconnects_per_worker"]) >= 1
    assert bus["back_on_all_workers_s"] is not None


def test_redis_rollback_short_drill_passes_and_members_were_told_of_the_new_epoch(tmp_path):
    proc, report = run_drill("redis-rollback", tmp_path)
    results = assert_passed_and_wrote_reports(proc, report)
    assert results["resumes"].get("epoch_changed", 0) >= 1  # members learned of the rollback
    bus = report["details"]["bus"]
    assert bus["subscriber_reconnects_per_worker"] and min(bus["subscriber_reconnects_per_worker"]) >= 1


def test_control_pause_short_drill_passes_and_the_woken_leader_did_not_revert_the_drain(tmp_path):
    proc, report = run_drill("control-pause", tmp_path)
    assert_passed_and_wrote_reports(proc, report)
    assert report["details"]["takeover_s"] is not None  # the standby led while the old leader was frozen
    assert report["details"]["after_wake"] == {"desired": "draining", "in_ring": False, "undrain_events": 0,
                                               "standby_leads": True, "woken_leads": False}


def test_drain_short_drill_passes_and_members_were_steered(tmp_path):
    proc, report = run_drill("drain", tmp_path)
    results = assert_passed_and_wrote_reports(proc, report)
    assert results["client_errors"].get("reconnect_notice", 0) >= 1  # members were told to move ...
    assert report["details"]["drained_s"] is not None  # ... and the worker emptied
    # No member was refused, cut or told BUS_UNAVAILABLE while following the drain.
    assert results["client_errors_after_fault"] == {}


def _starting(drill: psutil.Process) -> bool:
    return len(drill.children(recursive=True)) >= 4  # redis-server, the node supervisor and its two workers


def _running(drill: psutil.Process) -> bool:
    members = [c for c in drill.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED]
    return len(members) >= 40  # the --short population is connected: the drill's run phase


@pytest.mark.parametrize("when", [_starting, _running], ids=["while-starting", "while-running"])
def test_an_interrupted_drill_stops_every_process_it_started(tmp_path, when):
    with drill_process(["ringcast_cli", "drill", "kill-worker", "--short", "--out", str(tmp_path)]) as proc:
        drill = psutil.Process(proc.pid)
        eventually_blocking(lambda: when(drill), what=f"the drill {when.__name__.strip('_')}", timeout_s=60)
        started = drill.children(recursive=True)
        assert len(started) >= 4, [p.cmdline() for p in started]
        stderr = interrupt(proc, started, timeout_s=60)
    assert "interrupted" in stderr


# --- the drill's verifier and judge, without servers -------------------------------------------------------------

class _SentFrames:
    """Stands in for a WebSocket's send side: the verifier's reaction to a gap is what it sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self._response = type("R", (), {"url": "ws://127.0.0.1:1/ws"})()

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))


def _member():
    from chaos.drill.client import DRILL_BACKOFF, Ledger, RoomMember

    member = RoomMember(Ledger(), None, ["ws://127.0.0.1:1/ws"], 0, "r", DRILL_BACKOFF)
    member._on_joined({"type": "joined", "room": "r", "seq": 5, "epoch": "E1"})
    return member


def _msg(seq: int, epoch: str = "E1") -> dict:
    return {"type": "message", "room": "r", "seq": seq, "epoch": epoch, "data": {"ts": time.time() * 1000}}


async def test_verifier_accepts_the_next_message_and_counts_repeats_as_duplicates():
    member, ws = _member(), _SentFrames()
    for seq in (6, 7, 7, 6):
        await member._on_message(ws, _msg(seq))
    assert member.stream.intervals == {"E1": [[6, 7]]}
    assert member.ledger.duplicates == 2 and ws.sent == []


async def test_verifier_repairs_a_gap_by_rejoining_with_since_and_ignores_messages_until_joined():
    member, ws = _member(), _SentFrames()
    await member._on_message(ws, _msg(6))
    await member._on_message(ws, _msg(8))  # 7 never came
    assert member.ledger.gaps_while_connected == 1 and not member.live
    assert ws.sent == [{"type": "leave", "room": "r"},
                       {"type": "join", "room": "r", "since": {"seq": 6, "epoch": "E1"}}]
    assert not member.stream.has("E1", 8)


async def test_verifier_follows_a_new_epoch_from_seq_1_but_treats_a_later_start_as_a_gap():
    member, ws = _member(), _SentFrames()
    await member._on_message(ws, _msg(1, "E2"))
    assert member.stream.epoch == "E2" and member.stream.has("E2", 1) and ws.sent == []
    await member._on_message(ws, _msg(9, "E1"))  # the epoch it already left
    assert member.ledger.out_of_order == 1
    other = _member()
    await other._on_message(ws, _msg(3, "E2"))  # 1 and 2 of the new epoch were missed
    assert other.ledger.gaps_while_connected == 1


async def test_verifier_accepts_a_declared_skip_after_recovered_false_and_counts_it():
    member, ws = _member(), _SentFrames()
    member._on_joined({"type": "joined", "room": "r", "seq": 40, "epoch": "E1", "recovered": False,
                       "reason": "history_truncated"})
    await member._on_message(ws, _msg(30))
    assert member.ledger.declared_losses == 1 and member.ledger.resumes == {"history_truncated": 1}
    assert member.stream.has("E1", 30) and not member.stream.has("E1", 20) and ws.sent == []


def test_judge_fails_loss_duplicates_missing_recovery_and_slow_latency_and_passes_a_clean_run():
    from chaos.drill.measure import Thresholds, judge

    clean = {"lost": 0, "duplicates": 0, "out_of_order": 0, "recovery_s": 1.0, "members_never_receiving_again": 0,
             "latency": {"before": {"p99_ms": 20.0}, "after": {"p99_ms": 30.0}}}
    thresholds = Thresholds(max_recovery_s=10.0, max_p99_after_ms=250.0)
    assert judge(clean, thresholds) == []
    assert len(judge({**clean, "lost": 1, "duplicates": 2}, thresholds)) == 2
    assert "never received" in judge({**clean, "recovery_s": None, "members_never_receiving_again": 3}, thresholds)[0]
    assert "recovery took" in judge({**clean, "recovery_s": 11.0}, thresholds)[0]
    slow = {**clean, "latency": {"before": {"p99_ms": 200.0}, "after": {"p99_ms": 450.0}}}
    assert "p99 latency" in judge(slow, thresholds)[0]  # bound is max(250, 2 x 200) = 400
    assert judge({**slow, "latency": {"before": {"p99_ms": 200.0}, "after": {"p99_ms": 390.0}}}, thresholds) == []
