"""Starting one worker process: its hand-over document, its bus, its event loop.

Owns the contract between the supervisor and a worker process: the worker's
command line is only `python -m node.launch`, and everything else (every
setting, the Redis URL with its password, the signing keys, the restart
count) is one JSON document the supervisor writes to the worker's stdin and
closes. Nothing of it is in argv (readable by every local user through
/proc/<pid>/cmdline and `ps`) nor in the environment (readable by the same
user and root through /proc/<pid>/environ). It also owns the choice of the
bus implementation from the settings (`memory`, `redis`, `global`), logging
setup, the process's garbage-collector settings (`apply_gc_settings`), and
running the `node.worker.Worker` on uvloop until it stops.

It must not serve traffic or hold state of its own: everything after the
start is the worker's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import sys
import typing

from common.logs import setup_logging
from common.redis_connect import RedisTarget
from node.bus import Bus
from node.bus_cluster import RedisClusterBus
from node.bus_global import GlobalBroadcastBus
from node.bus_memory import MemoryBus
from node.bus_redis import RedisBus, RedisBusSettings
from node.config import NodeConfig
from node.worker import Worker

MODULE = "node.launch"  # what the supervisor runs with `python -m`, with no argument
MAX_HANDOVER_BYTES = 1 << 20  # the hand-over document is a few KB; anything larger is not the supervisor's


def make_bus(config: NodeConfig) -> Bus:
    """The bus `config.bus` names: in-process (`memory`), Redis (`redis`), a Redis Cluster (`redis-cluster`), or Redis with one global channel (`global`)."""
    rules = config.history_rules()
    if config.bus == "memory":
        return MemoryBus(rules.policy_for, config.idempotency_window_s, config.max_idempotency_keys)
    bus_class = {"global": GlobalBroadcastBus, "redis-cluster": RedisClusterBus}.get(config.bus, RedisBus)
    return bus_class(
        RedisBusSettings(
            url=RedisTarget.from_settings(config),
            channel_prefix=config.channel_prefix,
            key_prefix=config.key_prefix,
            timeout_s=config.bus_timeout_s,
            reconnect_base_s=config.bus_reconnect_base_s,
            reconnect_cap_s=config.bus_reconnect_cap_s,
            room_state_ttl_s=config.room_state_ttl_s,
            policy_for=rules.policy_for,
            max_connections=config.bus_max_connections,
            idempotency_window_s=config.idempotency_window_s,
        )
    )


def handover(config: NodeConfig, restarts: int) -> bytes:
    """The document the supervisor writes to a worker's stdin: every setting (secrets included) and the restart count."""
    return json.dumps({"config": dataclasses.asdict(config), "restarts": restarts}).encode()


def read_handover(stream: typing.BinaryIO) -> tuple[NodeConfig, int]:
    """The settings and restart count from the supervisor's hand-over document (stdin, up to EOF)."""
    raw = stream.read(MAX_HANDOVER_BYTES + 1)
    if len(raw) > MAX_HANDOVER_BYTES:
        raise ValueError(f"the hand-over document on stdin is larger than {MAX_HANDOVER_BYTES} bytes")
    document = json.loads(raw)
    return NodeConfig(**document["config"]), int(document.get("restarts", 0))


def apply_gc_settings(config: NodeConfig) -> None:
    """The worker's cyclic garbage collector, as `--gc-threshold` and `--gc-freeze` say (before the event loop starts).

    A threshold N > 0 collects the youngest generation after N net allocations
    of container objects (CPython: 700), the middle one after 50 of those
    collections and the oldest after 1000 of the middle one's (CPython: 10, 10);
    0 leaves CPython's thresholds. Freezing collects once, then moves every
    object still alive (modules, settings, the application) to a generation no
    collection walks.
    """
    if config.gc_threshold > 0:
        gc.set_threshold(config.gc_threshold, 50, 1000)
    if config.gc_freeze:
        gc.collect()
        gc.freeze()


def run_worker(config: NodeConfig, restarts: int = 0) -> None:
    setup_logging(config.log_level, component="worker", worker=config.shard_id)
    worker = Worker(config, make_bus(config), restarts)
    apply_gc_settings(config)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(worker.run())
    else:
        uvloop.run(worker.run())


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m node.launch < HANDOVER_JSON (run by the supervisor; settings never come in argv)",
              file=sys.stderr)
        return 2
    config, restarts = read_handover(sys.stdin.buffer)
    sys.stdin.close()
    run_worker(config, restarts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
