"""Free loopback ports for the servers that tests, drills and benchmarks start.

Owns which port a new local server gets. A port is handed out only if it
can be bound right now, from below the kernel's ephemeral range
(net.ipv4.ip_local_port_range), so an outgoing connection of any process on
the machine cannot take it between the choice and the server's own bind
(bind to port 0 picks from that range, and may give the same port twice
before anyone binds it). Each process walks its own sequence from a random
start, so it never hands out one port twice in a row. Under pytest-xdist
(PYTEST_XDIST_WORKER=gwN, PYTEST_XDIST_WORKER_COUNT) every test process
gets a disjoint slice, so parallel tests never pick each other's ports.

It must not start or stop anything: callers bind what they get.
"""

from __future__ import annotations

import os
import random
import socket

LOWEST_PORT = 10_000  # below it: well-known and registered services' ports
DEFAULT_EPHEMERAL_LOW = 32_768  # Linux's default first ephemeral port, when /proc cannot be read


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def port_slice(environ: dict[str, str] | None = None) -> range:
    """The ports this process may hand out: all of LOWEST_PORT..ephemeral, or its xdist worker's share."""
    env = os.environ if environ is None else environ
    high = max(_ephemeral_low(), LOWEST_PORT + 1_000)
    worker = env.get("PYTEST_XDIST_WORKER", "")
    count = int(env.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return range(LOWEST_PORT, high)
    index = int(worker[2:])
    size = (high - LOWEST_PORT) // count
    start = LOWEST_PORT + index * size
    return range(start, start + size)


class PortPicker:
    """Hands out bindable ports of one slice, walking it from a random start."""

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self._next = random.randrange(len(ports))

    def _candidates(self):
        for _ in range(len(self.ports)):
            port = self.ports[self._next]
            self._next = (self._next + 1) % len(self.ports)
            yield port

    def port(self, host: str = "127.0.0.1") -> int:
        for port in self._candidates():
            if _bindable(host, port):
                return port
        raise RuntimeError(f"no free port in {self.ports.start}..{self.ports.stop - 1} on {host}")

    def port_range(self, count: int, host: str = "127.0.0.1") -> int:
        """A first port such that first..first+count-1 are all bindable right now."""
        for first in self._candidates():
            if first + count > self.ports.stop:
                continue
            if all(_bindable(host, port) for port in range(first, first + count)):
                self._next = (self.ports.index(first) + count) % len(self.ports)
                return first
        raise RuntimeError(f"no {count} consecutive free ports in {self.ports.start}..{self.ports.stop - 1}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:  # no SO_REUSEADDR: a port with connections in TIME_WAIT is skipped too
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_picker: PortPicker | None = None


def _this_process() -> PortPicker:
    global _picker
    if _picker is None:
        _picker = PortPicker(port_slice())
    return _picker


def free_port(host: str = "127.0.0.1") -> int:
    """A port `host` can bind now, from this process's slice."""
    return _this_process().port(host)


def free_port_range(count: int, host: str = "127.0.0.1") -> int:
    """A first port such that first..first+count-1 are all free right now."""
    return _this_process().port_range(count, host)
