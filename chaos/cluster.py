"""Local clusters of real processes: a redis-server and `ringcast node` supervisors.

Owns starting each on free (or given) loopback ports, waiting until it
answers, and stopping exactly the processes it started, by PID. Shared by
`ringcast up`, the drills, the benchmarks and the test fixtures
(tests/conftest.py); never copy it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from chaos.eventually import eventually_blocking
from chaos.ports import free_port, free_port_range  # noqa: F401 - re-exported: tests import them from here

REPO = Path(__file__).resolve().parent.parent


def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: only the process we started, by its PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


@dataclass(frozen=True)
class RedisTlsFiles:
    """What a TLS redis-server (and a client of it) needs; made by chaos/redis_topologies.py."""

    ca_file: str  # the CA both sides trust
    server_cert_file: str
    server_key_file: str
    client_cert_file: str
    client_key_file: str
    auth_clients: str = "yes"  # redis-server --tls-auth-clients: yes (client certificate required) or optional


@dataclass
class RedisServer:
    port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ringcast-redis-"))
    password: str = ""  # requirepass, handed to redis-server in a config file (never on its command line)
    prefix: list[str] = field(default_factory=list)  # argv prefix, e.g. `ip netns exec NS` (chaos/netns.py)
    extra_args: list[str] = field(default_factory=list)  # more redis-server flags (e.g. --protected-mode no)
    tls: RedisTlsFiles | None = None  # TLS only: `port` is the --tls-port, the plain port is off

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/0"

    @property
    def bare_url(self) -> str:
        """The URL without the password (give the password by file or environment)."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    def _port_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        tls = self.tls
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls.server_cert_file,
                "--tls-key-file", tls.server_key_file, "--tls-ca-cert-file", tls.ca_file,
                "--tls-auth-clients", tls.auth_clients, "--tls-replication", "yes"]

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run scripts/bootstrap.sh (installs the Debian package)")
        conf = Path(self.workdir, "redis.conf")
        conf.write_text(f"requirepass {self.password}\n" if self.password else "")
        conf.chmod(0o600)
        self.proc = subprocess.Popen(
            [*self.prefix, binary, str(conf), *self._port_args(), "--bind", self.host, "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--daemonize", "no", "--loglevel", "warning", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        eventually_blocking(self.ping, timeout_s=10, what=f"redis-server on port {self.port}")
        return self

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=1)
        if self.tls is None:
            return sock
        import ssl

        context = ssl.create_default_context(cafile=self.tls.ca_file)
        context.check_hostname = False  # a liveness probe; tests of the name check start servers with other names
        context.load_cert_chain(self.tls.client_cert_file, self.tls.client_key_file)
        return context.wrap_socket(sock, server_hostname=self.host)

    def ping(self) -> bool:
        with self._connect() as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def command(self, *args: str) -> bytes:
        """Run one command with redis-cli and return its raw output (for assertions)."""
        env = dict(os.environ, REDISCLI_AUTH=self.password) if self.password else None  # not on the command line
        tls = [] if self.tls is None else ["--tls", "--cacert", self.tls.ca_file, "--cert", self.tls.client_cert_file,
                                           "--key", self.tls.client_key_file]
        out = subprocess.run(
            ["redis-cli", "-h", self.host, "-p", str(self.port), *tls, *args], capture_output=True, check=True, timeout=10,
            env=env,
        )
        return out.stdout

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port, empty (no persistence)."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL, by PID: a crash (no shutdown, no last write to replicas)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


def listening_ports_in_own_netns(pid: int) -> set[int]:
    """TCP ports process `pid` listens on, read from its own network namespace's socket table.

    psutil matches a process's socket inodes against the reading process's
    /proc/net/tcp, so it sees nothing of a process in another namespace;
    /proc/PID/net/tcp is the table of PID's namespace.
    """
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class MetricMissing(LookupError):
    """No sample of that metric (with those labels) in a /metrics page."""


def metric_value(page: str, name: str, labels: str = "") -> float:
    """Sum of the samples named `name` whose labels contain `labels`, in a Prometheus text page."""
    total = 0.0
    found = False
    for line in page.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{", 1)[0] == name and labels in key:
            total += float(value)
            found = True
    if not found:
        raise MetricMissing(f"no sample of {name}{{{labels}}} in the page")
    return total


def http_json(url: str, timeout_s: float = 2.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, (json.loads(body) if body else {})


class _ServiceProcess:
    """What every started ringcast process shares: its log file, its output and its stop, by PID."""

    proc: subprocess.Popen | None
    log_path: str
    prefix: list[str]  # argv prefix the command runs under, e.g. `ip netns exec NS` (same PID: it execs)
    STOP_TIMEOUT_S = 15.0

    def _launch(self, kind: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = tempfile.NamedTemporaryFile(prefix=f"ringcast-{kind}-", suffix=".log", delete=False)
        self.log_path = log.name
        self.proc = subprocess.Popen([*self.prefix, *cmd], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def _check_alive(self, kind: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"ringcast {kind} exited with {self.proc.returncode}; log:\n{self.log()}")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-5000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float | None = None) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, self.STOP_TIMEOUT_S if timeout_s is None else timeout_s)
        self.proc = None
        return code


@dataclass
class NodeProcess(_ServiceProcess):
    """A `ringcast node` supervisor and its workers."""

    port: int
    workers: int
    args: list[str]
    host: str = "127.0.0.1"  # where clients and probes reach the workers (their URLs)
    proc: subprocess.Popen | None = None
    log_path: str = ""
    prefix: list[str] = field(default_factory=list)
    bind_host: str = ""  # --host the workers bind to when not `host` (e.g. 0.0.0.0 inside a namespace)

    @property
    def ports(self) -> list[int]:
        return [self.port + i for i in range(self.workers)]

    def ws_url(self, index: int = 0) -> str:
        return f"ws://{self.host}:{self.port + index}/ws"

    def http_url(self, index: int, path: str) -> str:
        return f"http://{self.host}:{self.port + index}{path}"

    def start(self, ready_timeout_s: float = 30.0) -> "NodeProcess":
        self._launch("node", [sys.executable, "-m", "ringcast_cli", "node", "--host", self.bind_host or self.host, "--port",
                              str(self.port), "--workers", str(self.workers), *self.args])
        for index in range(self.workers):
            self.wait_ready(index, ready_timeout_s)
        return self

    def wait_ready(self, index: int, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            self._check_alive("node")
            return http_json(self.http_url(index, "/readyz"))[0] == 200
        eventually_blocking(ready, timeout_s=timeout_s, what=f"worker {index} on port {self.port + index} to be ready")

    def worker_pid(self, index: int) -> int:
        """The PID of worker `index`: the supervisor's child listening on its port.

        Raises LookupError while no child listens there (a worker restarting,
        or still starting). Workers carry no settings in their command line, so
        the port they listen on is what tells them apart.
        """
        import psutil

        assert self.proc is not None
        port = self.port + index
        for child in psutil.Process(self.proc.pid).children():
            try:
                sockets = child.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == port for s in sockets):
                return child.pid
            if self.prefix and port in listening_ports_in_own_netns(child.pid):
                return child.pid  # psutil reads our namespace's socket table, not the worker's
        raise LookupError(f"no worker listening on port {port}")

    def metrics(self, index: int) -> str:
        with urllib.request.urlopen(self.http_url(index, "/metrics"), timeout=2) as response:
            return response.read().decode()

    def metric(self, index: int, name: str, labels: str = "") -> float:
        """Sum of the samples of one metric (optionally filtered by a label substring).

        Raises MetricMissing when no sample matches: a renamed metric or a
        mistyped label must fail the check, not read as 0.
        """
        return metric_value(self.metrics(index), name, labels)

    STOP_TIMEOUT_S = 30.0  # a graceful node shutdown steers clients away first


@dataclass
class RouterProcess(_ServiceProcess):
    """A `ringcast router` (route service) process."""

    port: int
    args: list[str]
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    log_path: str = ""
    prefix: list[str] = field(default_factory=list)

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self, ready_timeout_s: float = 30.0) -> "RouterProcess":
        self._launch("router", [sys.executable, "-m", "ringcast_cli", "router", "--host", self.host,
                                "--port", str(self.port), *self.args])

        def healthy() -> bool:
            self._check_alive("router")
            return http_json(self.url("/healthz"))[0] == 200

        eventually_blocking(healthy, timeout_s=ready_timeout_s, what=f"router on port {self.port}")
        return self


OWN_TOKEN = object()  # ControlProcess.call's default: authenticate with the replica's own admin token


@dataclass
class ControlProcess(_ServiceProcess):
    """A `ringcast control` replica (the operator API and, while it holds the lease, the leader)."""

    port: int
    redis_url: str
    admin_token: str
    args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    log_path: str = ""
    prefix: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout_s: float = 30.0) -> "ControlProcess":
        cmd = [sys.executable, "-m", "ringcast_cli", "control", "--host", self.host, "--port", str(self.port),
               "--redis", self.redis_url, *self.args]
        # Not on the command line (ps would show it); the replica's own name beats a RINGCAST_ADMIN_TOKEN inherited here.
        env = dict(os.environ, RINGCAST_CONTROL_ADMIN_TOKEN=self.admin_token)
        self._launch("control", cmd, env)

        def healthy() -> bool:
            self._check_alive("control")
            return http_json(self.url + "/healthz")[0] == 200
        eventually_blocking(healthy, timeout_s=ready_timeout_s, what=f"control replica on port {self.port}")
        return self

    def get(self, path: str) -> tuple[int, dict]:
        return http_json(self.url + path)

    def metric(self, name: str, labels: str = "") -> float:
        """One metric of this replica's /metrics (raises MetricMissing, like NodeProcess.metric)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=2) as response:
            return metric_value(response.read().decode(), name, labels)

    def call(self, method: str, path: str, body: "dict | list | bytes | None" = None,
             token: "str | None | object" = OWN_TOKEN) -> tuple[int, dict]:
        """One API call with this replica's admin token, another `token`, or none (`token=None`).

        `body` is sent as JSON, or as is when it is bytes (to send what is not JSON).
        """
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        token = self.admin_token if token is OWN_TOKEN else token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, (json.loads(raw) if raw else {})

    def is_leader(self) -> bool:
        return bool(self.get("/healthz")[1].get("leader"))

    def kill(self) -> None:
        """SIGKILL, the crash drill: no lease release, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
