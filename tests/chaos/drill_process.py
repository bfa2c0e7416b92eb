"""A `ringcast drill` run as a child process, for the tests that interrupt one (local and fleet)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from typing import Iterator

import psutil

from chaos.cluster import REPO


@contextlib.contextmanager
def drill_process(args: list[str]) -> Iterator[subprocess.Popen]:
    """`python -m ARGS...` in the repository; if the test fails before interrupting it, it is still
    terminated (SIGTERM, so it stops what it started) and, past 60 s, killed."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def interrupt(proc: subprocess.Popen, started: list[psutil.Process], timeout_s: float) -> str:
    """SIGTERM the drill; it must exit 130 and leave none of the processes it `started` running.
    Returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 130, stderr[-2000:]
    _, still_running = psutil.wait_procs(started, timeout=20)
    assert still_running == [], [p.pid for p in still_running]
    return stderr
