"""Shared fixtures: a real redis-server and real `ringcast node` processes.

Tests that touch the bus use `redis_server`; tests that need workers call
`start_node(...)`, which starts a supervisor on free loopback ports, waits
until every worker answers /readyz, and stops it (by PID) after the test.

`make test` runs the suite in two pytest-xdist processes (`-n 2 --dist
loadgroup`): ports come from each process's own slice (chaos/ports.py), and
the tests that load the whole machine for a while (network-namespace fleets,
drills under load, benchmarks) are one group, run one after another by one
process, never two of them at once.

Everything the started processes leave in temporary files (their logs, the
Redis working folders) goes to one folder per run, `ringcast-tests-*` in the
system's temporary folder: removed when every test passed, kept (and named
at the end of the output) when one failed.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from chaos.cluster import ControlProcess, NodeProcess, RedisServer, RouterProcess, free_port, free_port_range
from chaos.redis_topologies import RedisClusterGroup

RUN_TEMP = pytest.StashKey[str]()  # this run's temporary folder (the controller's, not an xdist worker's)
RUN_PASSED = pytest.StashKey[bool]()


def pytest_configure(config):
    """Point TMPDIR at a new folder before the xdist workers start: they, and every process a test starts, inherit it."""
    if hasattr(config, "workerinput"):  # an xdist worker: its controller made the folder
        return
    folder = tempfile.mkdtemp(prefix="ringcast-tests-")
    os.environ["TMPDIR"] = folder
    tempfile.tempdir = None  # tempfile reads TMPDIR again at its next call
    config.stash[RUN_TEMP] = folder


def pytest_sessionfinish(session, exitstatus):
    if RUN_TEMP in session.config.stash:
        session.config.stash[RUN_PASSED] = exitstatus == 0


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if RUN_TEMP in config.stash and exitstatus != 0:
        terminalreporter.write_line(f"logs of the processes the tests started: {config.stash[RUN_TEMP]}")


def pytest_unconfigure(config):
    if config.stash.get(RUN_PASSED, False):
        shutil.rmtree(config.stash[RUN_TEMP], ignore_errors=True)


@pytest.fixture
def redis_server():
    server = RedisServer(port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster3():
    """A local Redis Cluster of 3 masters, no replicas (chaos/redis_topologies.py); stopped (by PID) after the test."""
    group = RedisClusterGroup(masters=3, replicas=0).start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def start_node(redis_server):
    started: list[NodeProcess] = []

    def start(workers: int = 1, *args: str, bus: str = "redis") -> NodeProcess:
        extra = list(args)
        if bus in ("redis", "global"):
            extra += ["--redis", redis_server.url]
        extra += ["--bus", bus]
        node = NodeProcess(port=free_port_range(workers), workers=workers, args=extra)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def start_router():
    """Start `ringcast router *args` on a free loopback port; stopped (by PID) after the test."""
    started: list[RouterProcess] = []

    def start(*args: str) -> RouterProcess:
        router = RouterProcess(port=free_port(), args=list(args))
        started.append(router)
        return router.start()

    yield start
    for router in started:
        router.stop()


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def start_control(redis_server):
    """Start `ringcast control` replicas against the test Redis; stopped (by PID) after the test."""
    started: list[ControlProcess] = []

    def start(*args: str, admin_token: str = ADMIN_TOKEN) -> ControlProcess:
        """`admin_token=""` starts a replica with no token configured (it refuses every mutation)."""
        control = ControlProcess(port=free_port(), redis_url=redis_server.url, admin_token=admin_token, args=list(args))
        started.append(control)
        return control.start()

    yield start
    for control in started:
        control.stop()


@pytest.fixture
def started():
    """A list a test appends the processes it starts by hand to (anything with `stop()`); each is
    stopped (by PID), last started first, after the test, whatever happened."""
    processes: list = []
    yield processes
    for process in reversed(processes):
        process.stop()


MACHINE_LOADING_TESTS = (  # run one at a time (one xdist group); each drives load across several processes
    "tests/fleet/",
    "tests/chaos/test_drills.py",
    "tests/chaos/test_bench.py",
    "tests/chaos/test_bench_compare.py",
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path.startswith(MACHINE_LOADING_TESTS):
            item.add_marker(pytest.mark.xdist_group("machine-loading"))
