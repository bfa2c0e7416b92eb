"""The tutorial's Node.js server (../shared/seed_server), started and stopped as a measuring instrument.

Owns finding it (`--seed-dir`, refusing with a clear message when the
directory, `node` or `npm` is missing), installing its packages once
(`npm install` when node_modules is absent), starting it with its own
start.sh on a free loopback port against a given redis-server, waiting until
it accepts connections, the PIDs to sample (the started process and the
Node cluster workers it forked, psutil children), and stopping exactly those
by PID. It is not part of ringcast: nothing here may be imported by node/,
router/ or control/, and it must not generate load (chaos/bench/cli.py does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chaos.cluster import REPO, free_port
from chaos.eventually import Timeout, eventually_blocking

DEFAULT_SEED_DIR = REPO.parent / "shared" / "seed_server"  # ../shared/seed_server next to the repository
NPM_INSTALL_TIMEOUT_S = 300.0  # `npm install` of three packages from the registry
READY_TIMEOUT_S = 20.0  # from start.sh to the server accepting a TCP connection
STOP_TIMEOUT_S = 10.0  # SIGTERM to exit, per process, before SIGKILL


class SeedUnavailable(RuntimeError):
    """The tutorial's server cannot be run here (no directory, no node/npm, install failed)."""


def check_seed_dir(seed_dir: str | os.PathLike | None) -> Path:
    """The seed server's directory, or SeedUnavailable saying what is missing."""
    path = Path(seed_dir) if seed_dir else DEFAULT_SEED_DIR
    if not (path / "server.js").is_file() or not (path / "start.sh").is_file():
        raise SeedUnavailable(f"the tutorial's server is not at {path} (no server.js/start.sh there): "
                              "pass --seed-dir DIR (default ../shared/seed_server next to the repository)")
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SeedUnavailable(f"`{tool}` is not on PATH: the tutorial's server needs Node.js "
                                  "(Debian: apt-get install nodejs npm)")
    return path


def npm_install(seed_dir: Path) -> bool:
    """Install its packages once (when node_modules is missing); True when it ran."""
    if (seed_dir / "node_modules").is_dir():
        return False
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=seed_dir, capture_output=True,
                          text=True, timeout=NPM_INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise SeedUnavailable(f"`npm install` in {seed_dir} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return True


@dataclass
class SeedServer:
    """One running tutorial server: `start.sh PORT REDIS_PORT WORKERS PIDFILE LOGFILE`."""

    seed_dir: Path
    redis_port: int
    workers: int = 1  # Node cluster workers (1: a single process, the tutorial's own setup)
    port: int = field(default_factory=free_port)
    pid: int | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ringcast-seed-"))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "seed.log")

    def start(self) -> "SeedServer":
        npm_install(self.seed_dir)
        pidfile = os.path.join(self.workdir, "seed.pid")
        subprocess.run(["bash", str(self.seed_dir / "start.sh"), str(self.port), str(self.redis_port),
                        str(self.workers), pidfile, self.log_path], check=True, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = int(Path(pidfile).read_text().strip())
        try:
            eventually_blocking(self._accepting, timeout_s=READY_TIMEOUT_S,
                                what=f"the tutorial's server on port {self.port}")
        except Timeout as exc:
            raise SeedUnavailable(f"the tutorial's server did not accept connections: {exc}\nlog:\n{self.log()}") from None
        return self

    def _accepting(self) -> bool:
        import psutil

        if self.pid is None or not psutil.pid_exists(self.pid):
            raise SeedUnavailable(f"the tutorial's server exited; log:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def pids(self) -> list[int]:
        """The started process and its descendants (Node cluster workers when workers > 1)."""
        import psutil

        if self.pid is None:
            return []
        try:
            return [self.pid, *(c.pid for c in psutil.Process(self.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the started process, then its children (listed first, by PID); SIGKILL what outlives it."""
        import psutil

        if self.pid is None:
            return
        procs = []
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        # the parent first: a cluster primary forks a new worker for every one that exits
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
            _, alive = psutil.wait_procs([proc], timeout=STOP_TIMEOUT_S)
            for left in alive:
                left.kill()
            psutil.wait_procs(alive, timeout=5)
        self.pid = None
