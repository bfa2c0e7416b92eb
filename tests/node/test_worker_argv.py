"""A worker's settings never show in `ps`: the Redis password and the config JSON stay out of its argv.

The supervisor hands each worker its settings on stdin (`node.launch.handover`)
and keeps the operator's RINGCAST_* variables out of the worker's environment.
Real processes against a redis-server started here with `requirepass`.
"""

from __future__ import annotations

import os
import stat

import psutil
import pytest

from chaos.cluster import NodeProcess, RedisServer, free_port, free_port_range
from chaos.eventually import eventually

PASSWORD = "secretpw-7f3a9c"


@pytest.fixture
def protected_redis():
    server = RedisServer(port=free_port(), password=PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


# The shared name every service of the host reads, and the node's own name (which wins over it).
@pytest.mark.parametrize("given_by", ["flag", "RINGCAST_REDIS", "RINGCAST_NODE_REDIS"])
async def test_no_process_of_a_node_shows_the_redis_password_or_its_settings(protected_redis, monkeypatch, given_by):
    assert PASSWORD in protected_redis.url
    if given_by == "flag":
        args = ["--redis", protected_redis.url]
    else:
        monkeypatch.setenv(given_by, protected_redis.url)
        monkeypatch.setenv("RINGCAST_NODE_HISTORY_SIZE", "7")  # any of the node's own variables is stripped too
        args = []
    node = NodeProcess(port=free_port_range(2), workers=2, args=[*args, "--bus", "redis", "--log-level", "warning"])
    try:
        node.start()
        # The workers did reach the password-protected Redis: their heartbeats are there.
        beating = await eventually(
            lambda: protected_redis.command("HLEN", "ringcast:nodes:heartbeat").strip() == b"2",
            what="both workers' heartbeats in the protected Redis")
        assert beating

        assert node.proc is not None
        supervisor = psutil.Process(node.proc.pid)
        workers = [psutil.Process(node.worker_pid(i)) for i in range(2)]
        assert sorted(w.pid for w in workers) == sorted(c.pid for c in supervisor.children())
        for worker in workers:
            cmdline = " ".join(worker.cmdline())
            assert PASSWORD not in cmdline and "{" not in cmdline and "redis://" not in cmdline, cmdline
            environment = worker.environ()
            assert not [name for name in environment if name.startswith("RINGCAST_")], sorted(environment)
            assert not [name for name, value in environment.items() if PASSWORD in value]
            # What is left in the environment is readable by the worker's user (and root) only.
            info = os.stat(f"/proc/{worker.pid}/environ")
            assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o400
        supervisor_cmdline = " ".join(supervisor.cmdline())
        # The supervisor's own command line is what the operator typed: a --redis flag shows there, the
        # environment variable does not (docs/security.md says to prefer it).
        assert (PASSWORD in supervisor_cmdline) is (given_by == "flag")
    finally:
        node.stop()
