"""The cluster a drill runs against: one it starts itself, or a running one named by flags.

Owns the drill's view of servers: the worker WebSocket URLs clients use,
the PID behind each worker (re-read after restarts), worker memory (psutil
RSS), each worker's /healthz and /metrics, and, for a cluster it started,
stopping every process it started by PID (a paused Redis is continued first
so it can stop). Starting processes is chaos/cluster.py's job; this module only
composes it. It must not inject faults (the scenarios do).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import urllib.request
from urllib.parse import urlparse

import psutil

from chaos.cluster import NodeProcess, RedisServer, free_port, free_port_range, metric_value

# Worker flags every drill cluster runs with, and why.
DRILL_NODE_FLAGS = [
    # History deep enough that a member away for a whole fault can resume without loss.
    "--history-size", "5000", "--history-ttl-s", "600", "--max-history-page", "1000",
    # Restart a killed worker quickly; the drill measures the rest of the recovery.
    "--restart-backoff-base-s", "0.2",
    # Publishers send up to tens of messages per second each; the default 100/s bucket is per connection
    # and would be fine, but a resuming member's leave+join burst must never be rate limited.
    "--message-rate-per-s", "1000", "--message-burst", "1000",
    # Thousands of drill sockets come from one loopback address.
    "--max-connections-per-ip", "20000",
    # Serve every join where it lands, without a `moved` hint: member i stays on worker URL i mod W, so every
    # room has members on several workers and cross-worker fan-out is exercised (a node alone routes among its
    # own workers, and members follow hints to their room's owner). The fleet turns hints back on.
    "--placement-hint", "off",
    "--log-level", "warning",
]


def http_url(ws_url: str, path: str) -> str:
    parsed = urlparse(ws_url)
    scheme = "https" if parsed.scheme == "wss" else "http"
    return f"{scheme}://{parsed.hostname}:{parsed.port}{path}"


def get_json(url: str, timeout_s: float = 1.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


class DrillCluster:
    """Workers (and maybe Redis) a drill talks to; `owned` says whether the drill started them."""

    client_liveness_s: float | None = None  # the clients' liveness check (chaos/drill/client.py); None: off

    def __init__(self, urls: list[str], redis_url: str, owned: bool, redis_pid: int | None = None) -> None:
        self.urls = urls
        self.redis_url = redis_url
        self.owned = owned
        self.redis: RedisServer | None = None
        self.nodes: list[NodeProcess] = []
        self._redis_pid = redis_pid
        self.redis_paused = False

    # --- construction -------------------------------------------------------------

    @classmethod
    def start_local(cls, layout: list[tuple[str, int]], extra_flags: list[str] | None = None) -> "DrillCluster":
        """A redis-server and one `ringcast node` per (loopback host, workers) entry, on free ports."""
        cluster = cls([], "", owned=True)
        try:
            cluster.redis = RedisServer(port=free_port()).start()
            cluster.redis_url = cluster.redis.url
            for host, workers in layout:
                node = NodeProcess(port=free_port_range(workers, host), workers=workers, host=host,
                                   args=["--redis", cluster.redis_url, *DRILL_NODE_FLAGS, *(extra_flags or [])])
                cluster.nodes.append(node)
                node.start()
                cluster.urls += [node.ws_url(i) for i in range(workers)]
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @classmethod
    def external(cls, urls: list[str], redis_url: str, redis_pid: int | None) -> "DrillCluster":
        return cls(urls, redis_url, owned=False, redis_pid=redis_pid)

    # --- processes ----------------------------------------------------------------

    @property
    def redis_pid(self) -> int | None:
        if self.redis is not None and self.redis.proc is not None:
            return self.redis.proc.pid
        return self._redis_pid

    def worker_pid(self, url_index: int) -> int | None:
        """The PID serving worker URL `url_index` right now (None while it is down)."""
        url = self.urls[url_index]
        for node in self.nodes:
            for index in range(node.workers):
                if node.ws_url(index) == url:
                    if node.proc is None or node.proc.poll() is not None:
                        return None
                    try:
                        return node.worker_pid(index)
                    except (LookupError, psutil.Error):
                        return None
        port = urlparse(url).port
        try:  # a cluster we did not start: the process listening on the port (visible for our own user)
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                    return conn.pid
        except psutil.Error:
            pass
        return None

    def worker_pids(self) -> list[int]:
        return [pid for pid in (self.worker_pid(i) for i in range(len(self.urls))) if pid is not None]

    def worker_rss(self) -> dict[int, int]:
        """RSS bytes of each worker process alive now, by PID."""
        out = {}
        for pid in self.worker_pids():
            try:
                out[pid] = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return out

    def healthz(self, url_index: int) -> dict:
        status, body = get_json(http_url(self.urls[url_index], "/healthz"))
        return body if status == 200 else {}

    def ready(self, url_index: int) -> bool:
        return get_json(http_url(self.urls[url_index], "/readyz"))[0] == 200

    def metric(self, url_index: int, name: str, labels: str = "") -> float:
        """Sum of one Prometheus metric's samples (labels containing `labels`) on one worker, now.

        Raises MetricMissing when the worker exports no such sample, and
        OSError when the worker does not answer: during a drill a worker may be
        down, and a number it cannot give is not 0. Read once where the worker
        must be up (a baseline before the fault); poll with `eventually` where
        it may be down, which asks again until it answers.
        """
        return metric_value(self.metrics_page(url_index), name, labels)

    def metrics_page(self, url_index: int) -> str:
        """One worker's /metrics page (several values read from one page are from one moment)."""
        with urllib.request.urlopen(http_url(self.urls[url_index], "/metrics"), timeout=2) as response:
            return response.read().decode()

    def pause_redis(self) -> None:
        pid = self.redis_pid
        assert pid is not None, "no Redis PID: start a local cluster or pass --redis-pid"
        os.kill(pid, signal.SIGSTOP)
        self.redis_paused = True

    def resume_redis(self) -> None:
        pid = self.redis_pid
        if pid is not None and self.redis_paused:
            os.kill(pid, signal.SIGCONT)
        self.redis_paused = False

    def logs(self) -> dict[str, str]:
        return {node.log_path: node.log() for node in self.nodes}

    def describe(self) -> dict:
        """What the reports say about where the drill ran."""
        return {}

    def room_prefix(self, base: str, rooms: int) -> str:
        """The prefix of the drill's room names: `base` and a random token (a fleet also spreads them)."""
        return f"{base}{secrets.token_hex(3)}:"

    def stop(self) -> None:
        """Stop every process this drill started, by PID; a cluster named by flags is left running."""
        self.resume_redis()
        if not self.owned:
            return
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                pass
        if self.redis is not None:
            self.redis.stop()
