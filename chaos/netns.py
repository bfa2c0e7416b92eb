"""A fleet of test hosts made of Linux network namespaces on one private bridge.

Owns building and removing, as root, N "hosts" that are real network stacks
on this machine: one namespace each (`rc<pid>h<i>`), a veth pair from each
into a bridge in the root namespace (`rc<pid>br`), host i at 198.18.0.<i+1>/24
and the bridge at 198.18.0.254/24, so clients in the root namespace reach
every host through the bridge and see each host at its own address. The
first fleet on a machine gets 198.18.0.0/24 (hosts .1, .2, ..., bridge
.254); a fleet built while another exists takes the next free /24 of the
range (198.18.1.0/24, ...), chosen under a lock file, so that two fleets
never route the same addresses. It also
owns running a program inside a host (`ip netns exec` execs it: the PID we
get is the program's), a thread that talks from inside a host (to reach
what a cut host still serves to itself), and cutting and restoring a host's
link (the bridge side of its veth down / up: nothing gets in or out, no FIN,
no RST, like a pulled cable or a switch port failing).

Addresses come only from the benchmarking range 198.18.0.0/15 (RFC 2544:
never routed on the Internet); the namespaces get no default route and the
bridge has no uplink, so no packet of a fleet can leave the bridge it made.

It touches only what it created: names carry this process's PID, and
`close()` (also on any error while building, and on `with` exit) stops the
processes it was asked to track and then any process still inside one of
its namespaces, by PID, and deletes its namespaces, veths and bridge. It
must not know what runs on the hosts (chaos/drill/fleet.py composes that).
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

ALLOWED_RANGE = ipaddress.ip_network("198.18.0.0/15")  # the benchmarking range (RFC 2544): every fleet lives in it
FIRST_NETWORK = ipaddress.ip_network("198.18.0.0/24")  # the first fleet's; later ones take the next free /24
BRIDGE_HOST_NUMBER = 254  # the root namespace's address on the bridge (.254): the clients' source address
LOCK_PATH = "/run/lock/ringcast-netns.lock"  # held while a fleet picks its /24 and claims it
MAX_HOSTS = 16
IP_TIMEOUT_S = 10.0  # longest one `ip` command may take
CLONE_NEWNET = 0x40000000


class FleetUnavailable(RuntimeError):
    """Namespaces cannot be made here; the message says what is missing."""


@dataclass(frozen=True)
class Host:
    index: int  # 0-based
    netns: str  # namespace name
    address: str  # 198.18.0.<index+1>
    veth_bridge: str  # the veth end on the bridge, in the root namespace (cut here)
    veth_host: str  # the veth end inside the namespace

    @property
    def name(self) -> str:
        return f"host{self.index + 1}"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def check_can_build(tag: str) -> None:
    """Raise FleetUnavailable saying what is missing, unless namespaces, veths and bridges can be made."""
    if os.geteuid() != 0:
        raise FleetUnavailable(f"a netns fleet needs root (creating network namespaces); running as uid {os.geteuid()}")
    if shutil.which("ip") is None:
        raise FleetUnavailable("a netns fleet needs the `ip` command (iproute2): apt-get install iproute2")
    probe = f"{tag}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        raise FleetUnavailable(f"cannot create a network namespace (`ip netns add {probe}`): {made.stderr.strip()} "
                               "(a container needs CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    try:
        bridge = _ip("link", "add", f"{tag}pb", "type", "bridge", check=False)
        if bridge.returncode != 0:
            raise FleetUnavailable(f"cannot create a bridge: {bridge.stderr.strip()} (kernel module `bridge`)")
        _ip("link", "del", f"{tag}pb", check=False)
        veth = _ip("link", "add", f"{tag}pv", "type", "veth", "peer", "name", f"{tag}pp", "netns", probe, check=False)
        if veth.returncode != 0:
            raise FleetUnavailable(f"cannot create a veth pair into a namespace: {veth.stderr.strip()} (module `veth`)")
        _ip("link", "del", f"{tag}pv", check=False)
    finally:
        _ip("netns", "del", probe, check=False)


class NetnsFleet:
    """`with NetnsFleet(3) as fleet:` N hosts on a private bridge; everything removed on exit."""

    def __init__(self, hosts: int = 3, tag: str | None = None) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS}, got {hosts}")
        self.tag = tag or f"rc{os.getpid()}"  # every name we create starts with it (IFNAMSIZ: 15 characters)
        if len(self.tag) + 3 > 15:
            raise ValueError(f"tag {self.tag!r} too long for interface names")
        self.bridge = f"{self.tag}br"
        self.host_count = hosts
        self.network: ipaddress.IPv4Network | None = None  # chosen by build()
        self.bridge_address = ""
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen] = []  # started through popen(): stopped first, by PID
        self._built = False
        self._cut: set[int] = set()

    # --- lifetime -------------------------------------------------------------------------

    def __enter__(self) -> "NetnsFleet":
        self.build()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def build(self) -> None:
        check_can_build(self.tag)
        self._built = True  # from here on, close() removes whatever exists
        try:
            os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
            with open(LOCK_PATH, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed: the bridge address claims the /24
                self.network = _free_network()
                self.bridge_address = str(self.network.network_address + BRIDGE_HOST_NUMBER)
                self.hosts = [Host(i, f"{self.tag}h{i + 1}", str(self.network.network_address + i + 1),
                                   f"{self.tag}v{i + 1}", f"{self.tag}e{i + 1}") for i in range(self.host_count)]
                for address in [self.bridge_address, *(h.address for h in self.hosts)]:
                    assert ipaddress.ip_address(address) in ALLOWED_RANGE, address
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.bridge_address}/{self.network.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                _ip("netns", "add", host.netns)
                _ip("link", "add", host.veth_bridge, "type", "veth", "peer", "name", host.veth_host, "netns", host.netns)
                _ip("link", "set", host.veth_bridge, "master", self.bridge)
                _ip("link", "set", host.veth_bridge, "up")
                _ip("link", "set", "lo", "up", netns=host.netns)
                _ip("addr", "add", f"{host.address}/{self.network.prefixlen}", "dev", host.veth_host, netns=host.netns)
                _ip("link", "set", host.veth_host, "up", netns=host.netns)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop what runs in the fleet (by PID) and delete every namespace, veth and the bridge we made."""
        for proc in self.processes:
            _stop(proc)
        self.processes.clear()
        if not self._built:
            return
        for host in self.hosts:  # anything still inside one of our namespaces was started by us
            for pid in self.pids_in(host):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for host in self.hosts:
            _ip("netns", "del", host.netns, check=False)  # takes the veth pair with it
            _ip("link", "del", host.veth_bridge, check=False)  # in case the namespace part never happened
        _ip("link", "del", self.bridge, check=False)
        self._built = False

    def leftovers(self) -> list[str]:
        """Names of our namespaces and interfaces that still exist (empty once closed)."""
        return leftovers(self.tag)

    # --- running things on a host -------------------------------------------------------------

    def host(self, index_or_name: int | str) -> Host:
        if isinstance(index_or_name, int):
            return self.hosts[index_or_name]
        return next(h for h in self.hosts if index_or_name in (h.name, h.netns, h.address))

    def prefix(self, host: Host) -> list[str]:
        """The argv prefix that runs a program inside `host` (`ip netns exec` execs it: same PID)."""
        return ["ip", "netns", "exec", host.netns]

    def popen(self, host: Host, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a program inside `host`; close() stops it (SIGTERM, then SIGKILL), by PID."""
        proc = subprocess.Popen([*self.prefix(host), *argv], **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, host: Host, argv: list[str], timeout_s: float = 10.0) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix(host), *argv], capture_output=True, text=True, timeout=timeout_s)

    def pids_in(self, host: Host) -> list[int]:
        result = _ip("netns", "pids", host.netns, check=False)
        return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []

    def call_in(self, host: Host, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run `fn` in a thread that lives in `host`'s namespace: its sockets are the host's.

        setns() moves only the calling thread, so a fresh thread is used and
        thrown away: no other thread (nor the asyncio default executor) ever
        runs in the host's namespace.
        """
        outcome: dict = {}

        def body() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{host.netns}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {host.netns}")
                finally:
                    os.close(fd)
                outcome["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome["error"] = exc

        thread = threading.Thread(target=body, name=f"in-{host.netns}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"call inside {host.netns} did not return within {timeout_s} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    # --- faults -----------------------------------------------------------------------------------

    def cut(self, host: Host) -> None:
        """Take `host` off the bridge: its bridge-side veth down. Packets are dropped silently both ways."""
        _ip("link", "set", host.veth_bridge, "down")
        self._cut.add(host.index)

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.veth_bridge, "up")
        self._cut.discard(host.index)

    def is_cut(self, host: Host) -> bool:
        return host.index in self._cut

    def describe(self) -> dict:
        return {"bridge": self.bridge, "bridge_address": self.bridge_address, "network": str(self.network),
                "hosts": [{"name": h.name, "netns": h.netns, "address": h.address, "veth": h.veth_bridge}
                          for h in self.hosts]}


def _free_network() -> ipaddress.IPv4Network:
    """The first /24 of 198.18.0.0/15 that no address or route of the root namespace touches."""
    used: list[ipaddress.IPv4Network] = []
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    for link in json.loads(out.stdout or "[]"):
        for info in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    out = subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    for route in json.loads(out.stdout or "[]"):
        if route.get("dst", "default") != "default":
            used.append(ipaddress.ip_network(route["dst"], strict=False))
    for candidate in ALLOWED_RANGE.subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise FleetUnavailable("no free /24 left in 198.18.0.0/15 (too many fleets, or the range is in use here)")


def leftovers(tag: str) -> list[str]:
    """Namespaces and links whose names start with `tag` (what a fleet with that tag would have made)."""
    ours = re.compile(re.escape(tag) + r"(h\d+|v\d+|e\d+|br|probe|pb|pv|pp)$")
    names = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=IP_TIMEOUT_S).stdout
    names += [line.split()[0] for line in netns.splitlines() if line.split() and ours.match(line.split()[0])]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=IP_TIMEOUT_S).stdout
    for line in links.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@", 1)[0]
            if ours.match(name):
                names.append(name)
    return names


def _stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
