"""Steps of the placement tests that tests/router/helpers.py does not have: a node started with a
static `--nodes` ring (no control plane), which needs its ports before it starts, so the
`start_node` fixture (which picks them itself) cannot start it."""

from __future__ import annotations

import contextlib
from typing import Iterator

from chaos.cluster import NodeProcess, RedisServer, free_port_range


@contextlib.contextmanager
def node_with_static_ring(redis_server: RedisServer, workers: int) -> Iterator[NodeProcess]:
    """A node whose `--nodes` list holds exactly its own workers; stopped (by PID) even if its start fails."""
    port = free_port_range(workers)
    nodes = ",".join(f"127.0.0.1:{port + index}" for index in range(workers))
    node = NodeProcess(port=port, workers=workers, args=["--redis", redis_server.url, "--nodes", nodes])
    try:
        yield node.start()
    finally:
        node.stop()
