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
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from chaos.cluster import REPO

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


def test_drain_short_drill_passes_and_members_were_steered(tmp_path):
    proc, report = run_drill("drain", tmp_path)
    results = assert_passed_and_wrote_reports(proc, report)
    assert results["client_errors"].get("reconnect_notice", 0) >= 1  # members were told to move ...
    assert report["details"]["drained_s"] is not None  # ... and the worker emptied
    # No member was refused or cut while following the drain (BUS_UNAVAILABLE is judged by the full-size drill).
    assert not [k for k in results["client_errors_after_fault"] if k.startswith(("http_", "close_"))]


def test_an_interrupted_drill_stops_every_process_it_started(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringcast_cli", "drill", "kill-worker", "--short", "--out", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        drill = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        started: list[psutil.Process] = []
        while time.monotonic() < deadline:  # redis-server, the node supervisor and its two workers
            started = drill.children(recursive=True)
            if len(started) >= 4:
                break
            time.sleep(0.1)
        assert len(started) >= 4, [p.cmdline() for p in started]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    _, still_running = psutil.wait_procs(started, timeout=20)
    assert still_running == [], [p.pid for p in still_running]
