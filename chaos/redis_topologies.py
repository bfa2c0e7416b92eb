"""Redis beyond one plain server, for tests and drills: TLS certificates, a Sentinel group, a Redis Cluster.

Owns making a throw-away certificate authority with the `openssl` command
(`make_tls_files`: a CA, a server certificate for 127.0.0.1, a client
certificate, and for refusal tests a server certificate for another name and
an unrelated CA), and starting a Sentinel topology on free loopback ports
(`SentinelGroup`: a master, one replica, three `redis-sentinel` processes,
configuration files in a temp dir), and a Redis Cluster (`RedisClusterGroup`:
N masters with M replicas each, made by `redis-cli --cluster create`), all
stopped by PID.

It must not start ringcast processes (chaos/cluster.py does) nor decide
anything about delivery: it only brings Redis up, down, and over.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chaos.cluster import RedisServer, RedisTlsFiles, free_port, stop_process
from chaos.eventually import eventually_blocking

MASTER_NAME = "mymaster"  # the Sentinel service name of a SentinelGroup
SENTINEL_DOWN_AFTER_MS = 1000  # a master silent this long is subjectively down
SENTINEL_FAILOVER_TIMEOUT_MS = 3000  # retry a stuck failover after this long


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed_cert(directory: Path, name: str, ca: str, subject: str, san: str, usage: str) -> None:
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={subject}",
             "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name, cwd=directory)


@dataclass(frozen=True)
class TlsMaterial:
    files: RedisTlsFiles  # CA, server cert for 127.0.0.1, client cert
    other_name_cert_file: str  # a server certificate for `other.invalid` only (fails a hostname check on 127.0.0.1)
    other_name_key_file: str
    unrelated_ca_file: str  # a CA that signed nothing here (a client trusting it refuses the server)

    def with_server(self, cert_file: str, key_file: str) -> RedisTlsFiles:
        files = self.files
        return RedisTlsFiles(files.ca_file, cert_file, key_file, files.client_cert_file, files.client_key_file,
                             files.auth_clients)


def make_tls_files(directory: str | Path, auth_clients: str = "yes") -> TlsMaterial:
    """A CA and certificates in `directory`, made now with `openssl` (valid two days)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "unrelated-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=ringcast test {ca}", cwd=path)
    _signed_cert(path, "server", "ca", "127.0.0.1", "IP:127.0.0.1,DNS:localhost", "serverAuth,clientAuth")
    _signed_cert(path, "client", "ca", "ringcast", "DNS:ringcast", "clientAuth")
    _signed_cert(path, "other", "ca", "other.invalid", "DNS:other.invalid", "serverAuth,clientAuth")
    for key in path.glob("*.key"):
        key.chmod(0o600)
    files = RedisTlsFiles(str(path / "ca.crt"), str(path / "server.crt"), str(path / "server.key"),
                          str(path / "client.crt"), str(path / "client.key"), auth_clients)
    return TlsMaterial(files, str(path / "other.crt"), str(path / "other.key"), str(path / "unrelated-ca.crt"))


@dataclass
class SentinelProcess:
    port: int
    master_port: int
    workdir: str
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None

    def start(self) -> "SentinelProcess":
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError("redis-sentinel not found: run scripts/bootstrap.sh (installs the Debian package)")
        conf = Path(self.workdir, f"sentinel-{self.port}.conf")  # sentinel rewrites it: its own copy
        conf.write_text(
            f"port {self.port}\nbind {self.host}\ndaemonize no\ndir {self.workdir}\nloglevel warning\n"
            f"sentinel monitor {MASTER_NAME} {self.host} {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually_blocking(self.ping, timeout_s=10, what=f"redis-sentinel on port {self.port}")
        return self

    def ping(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def master_port_now(self) -> int | None:
        """The port this sentinel names as the master now (None if it cannot say)."""
        out = subprocess.run(["redis-cli", "-h", self.host, "-p", str(self.port), "SENTINEL",
                              "get-master-addr-by-name", MASTER_NAME], capture_output=True, timeout=10)
        lines = out.stdout.split()
        return int(lines[1]) if out.returncode == 0 and len(lines) == 2 else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class SentinelGroup:
    """A master, one replica and three sentinels (quorum 2) on free loopback ports."""

    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ringcast-sentinel-"))
    master: RedisServer | None = None
    replica: RedisServer | None = None
    sentinels: list[SentinelProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def start(self) -> "SentinelGroup":
        self.master = RedisServer(port=free_port(), workdir=tempfile.mkdtemp(dir=self.workdir)).start()
        self.replica = RedisServer(port=free_port(), workdir=tempfile.mkdtemp(dir=self.workdir),
                                   extra_args=["--replicaof", "127.0.0.1", str(self.master.port)]).start()
        eventually_blocking(lambda: b"master_link_status:up" in self.replica.command("INFO", "replication"),
                            timeout_s=15, what="the replica to sync with the master")
        for _ in range(3):
            self.sentinels.append(SentinelProcess(free_port(), self.master.port, self.workdir).start())
        # Every sentinel must know the replica (from the master's INFO) and its peers (over hello
        # messages) before a failover can be agreed: wait for both, or a kill would find no quorum.
        eventually_blocking(self._sentinels_ready, timeout_s=20, what="sentinels to see the replica and each other")
        return self

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(sentinel.port), "SENTINEL", "master",
                                  MASTER_NAME], capture_output=True, timeout=10).stdout.split()
            info = dict(zip(out[0::2], out[1::2]))
            if info.get(b"num-slaves") != b"1" or info.get(b"num-other-sentinels") != b"2":
                return False
        return True

    def master_port_now(self) -> int | None:
        """The master's port if a majority of sentinels agree on it."""
        ports = [sentinel.master_port_now() for sentinel in self.sentinels]
        for port in set(ports):
            if port is not None and ports.count(port) >= 2:
                return port
        return None

    def kill_master(self) -> RedisServer:
        """SIGKILL the master; returns the replica, which the sentinels will promote."""
        assert self.master is not None and self.replica is not None
        self.master.kill()
        return self.replica

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in (self.replica, self.master):
            if server is not None:
                server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


CLUSTER_NODE_TIMEOUT_MS = 1000  # a master silent this long is failing; its replica then takes over


@dataclass
class RedisClusterGroup:
    """A local Redis Cluster: `masters` masters (3 or more, or 1 alone), each with `replicas` replicas, on free loopback ports.

    Each node is a RedisServer with its own temp dir (its nodes.conf is there)
    and PID; the cluster is made with `redis-cli --cluster create` and waited on
    until every node says `cluster_state:ok` and knows every other node.
    """

    masters: int = 3
    replicas: int = 0
    tls: RedisTlsFiles | None = None  # TLS only, between the nodes too (tls-cluster, tls-replication)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ringcast-rcluster-"))
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The seed URL (`redis+cluster://`) naming every master started."""
        return ("rediss" if self.tls else "redis") + "+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:self.masters])

    def start(self) -> "RedisClusterGroup":
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli not found: run scripts/bootstrap.sh (installs the Debian package)")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        count = self.masters * (1 + self.replicas)
        for _ in range(count):
            self.nodes.append(RedisServer(
                port=free_port(), workdir=tempfile.mkdtemp(dir=self.workdir), tls=self.tls,
                extra_args=[*(["--tls-cluster", "yes"] if self.tls else []), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-port", str(free_port()),  # the node-to-node bus: a free port of its own, not port + 10000
                            "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                            "--cluster-replica-validity-factor", "0"],
            ).start())
        if self.masters == 1 and self.replicas == 0:  # below redis-cli's three masters: one node owns every slot
            self.nodes[0].command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        else:
            # redis-cli makes the first `masters` nodes masters and gives each the next ones as replicas.
            tls = [] if self.tls is None else ["--tls", "--cacert", self.tls.ca_file, "--cert", self.tls.client_cert_file,
                                               "--key", self.tls.client_key_file]
            subprocess.run(["redis-cli", *tls, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
        eventually_blocking(self._ready, timeout_s=30, what="every cluster node to say cluster_state:ok")

    def _ready(self) -> bool:
        for node in self.nodes:
            info = node.command("CLUSTER", "INFO")
            if b"cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}".encode() not in info:
                return False
            if b"role:slave" in node.command("INFO", "replication") and \
                    b"master_link_status:up" not in node.command("INFO", "replication"):
                return False
        return True

    def live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def master_of_slot(self, slot: int) -> RedisServer:
        """The live node every live node's CLUSTER NODES names as the master of `slot` now."""
        owners = set()
        for node in self.live_nodes():
            for line in node.command("CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                if "master" not in fields[2].split(",") or "fail" in fields[2].split(","):
                    continue
                for item in fields[8:]:
                    first, _, last = item.partition("-")
                    if first.isdigit() and int(first) <= slot <= int(last or first):
                        owners.add(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        by_port = {node.port: node for node in self.live_nodes()}
        if len(owners) != 1 or next(iter(owners)) not in by_port:
            raise LookupError(f"the live nodes do not agree on a live master of slot {slot}: {owners}")
        return by_port[next(iter(owners))]

    def move_slot(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Move `slot` from master `source` to master `target` with its keys, as `redis-cli --cluster reshard` does."""
        source_id = source.command("CLUSTER", "MYID").strip().decode()
        target_id = target.command("CLUSTER", "MYID").strip().decode()
        target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        for _ in range(10_000):  # bounded: 100 keys per round
            keys = source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "100").decode().split()
            if not keys:
                break
            source.command("MIGRATE", target.host, str(target.port), "", "0", "5000", "KEYS", *keys)
        masters = [node for node in self.live_nodes() if node.command("ROLE").split(b"\n", 1)[0].strip() == b"master"]
        for node in [target, source, *(m for m in masters if m is not source and m is not target)]:
            node.command("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def keyslot(self, key: str) -> int:
        return int(self.live_nodes()[0].command("CLUSTER", "KEYSLOT", key).strip())

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A live replica of `master` (by the replica's own INFO)."""
        for node in self.live_nodes():
            if node is master:
                continue
            info = node.command("INFO", "replication")
            if b"role:slave" in info and f"master_port:{master.port}\r\n".encode() in info:
                return node
        raise LookupError(f"no live replica of port {master.port}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
