"""A real HAProxy process for the proxy tests (Debian's haproxy, scripts/bootstrap.sh).

Owns starting `haproxy -W -db -f CFG` (master-worker in the foreground), waiting until it accepts on
127.0.0.1:port, reloading it, and stopping exactly that process by its PID (chaos.cluster.stop_process).
The fixture that starts and always stops it is `start_haproxy` (tests/proxy/conftest.py).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from chaos.cluster import stop_process
from chaos.eventually import eventually_blocking


class HaproxyProcess:
    def __init__(self, cfg_path: Path, port: int) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            pytest.fail("haproxy not found: run scripts/bootstrap.sh (installs the Debian package)")
        self.port = port
        self.log_path = cfg_path.with_suffix(".log")  # next to its configuration, in the test's tmp_path
        self.log_file = open(self.log_path, "ab")
        # -W: master-worker, so `reload` (SIGUSR2 to the master) re-reads the file like `systemctl reload`;
        # -db: in the foreground, the master is the process started here and stopped by its PID.
        self.proc = subprocess.Popen([binary, "-W", "-db", "-f", str(cfg_path)], stdout=self.log_file,
                                     stderr=subprocess.STDOUT)

    def wait_listening(self, timeout_s: float = 15.0) -> "HaproxyProcess":
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        eventually_blocking(listening, timeout_s=timeout_s, what=f"haproxy listening on port {self.port}")
        return self

    def reload(self) -> None:
        """Re-read the configuration file: a new worker process takes new connections; the old one keeps
        its open ones (HAProxy's seamless reload)."""
        self.proc.send_signal(signal.SIGUSR2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=10)
        self.log_file.close()
