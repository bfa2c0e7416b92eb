"""Starting one worker process: its command line, its environment, its bus, its event loop.

Owns the contract between the supervisor and a worker process (the settings
as JSON in argv, the signing keys and the restart count in the environment:
argv is world-readable, the environment is not), the choice of the bus
implementation from the settings (`memory`, `redis`, `global`), logging
setup, and running the `node.worker.Worker` on uvloop until it stops.

Run by the supervisor as `python -m node.launch CONFIG_JSON`. It must not
serve traffic or hold state of its own: everything after the start is the
worker's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys

from common.logs import setup_logging
from node.bus import Bus
from node.bus_global import GlobalBroadcastBus
from node.bus_memory import MemoryBus
from node.bus_redis import RedisBus, RedisBusSettings
from node.config import NodeConfig
from node.worker import Worker

MODULE = "node.launch"  # what the supervisor runs with `python -m`
RESTARTS_ENV = "RINGCAST_WORKER_RESTARTS"  # set by the supervisor for each (re)start
SECRETS_ENV = "RINGCAST_WORKER_JWT_SECRETS"  # the supervisor hands the signing keys over here, not in argv


def make_bus(config: NodeConfig) -> Bus:
    """The bus `config.bus` names: in-process (`memory`), Redis (`redis`) or Redis with one global channel (`global`)."""
    rules = config.history_rules()
    if config.bus == "memory":
        return MemoryBus(rules.policy_for)
    bus_class = GlobalBroadcastBus if config.bus == "global" else RedisBus
    return bus_class(
        RedisBusSettings(
            url=config.redis,
            channel_prefix=config.channel_prefix,
            key_prefix=config.key_prefix,
            timeout_s=config.bus_timeout_s,
            reconnect_base_s=config.bus_reconnect_base_s,
            reconnect_cap_s=config.bus_reconnect_cap_s,
            room_state_ttl_s=config.room_state_ttl_s,
            policy_for=rules.policy_for,
            max_connections=config.bus_max_connections,
        )
    )


def config_to_json(config: NodeConfig) -> str:
    """The worker's settings for its command line, without the signing keys (argv is world-readable)."""
    return json.dumps(dict(dataclasses.asdict(config), jwt_secret=[]))


def secrets_env(config: NodeConfig) -> dict[str, str]:
    """The signing keys for the worker's environment (readable only by its user)."""
    return {SECRETS_ENV: json.dumps(config.jwt_secret)}


def run_worker(config: NodeConfig, restarts: int = 0) -> None:
    setup_logging(config.log_level, component="worker", worker=config.shard_id)
    worker = Worker(config, make_bus(config), restarts)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(worker.run())
    else:
        uvloop.run(worker.run())


def main(argv: list[str]) -> int:
    values = json.loads(argv[0])
    values["jwt_secret"] = json.loads(os.environ.get(SECRETS_ENV, "[]"))
    config = NodeConfig(**values)
    run_worker(config, int(os.environ.get(RESTARTS_ENV, "0") or 0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
