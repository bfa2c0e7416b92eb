"""`ringcast node`: the edge node's command line.

Owns turning flags, environment and config file into a `NodeConfig` and
starting either the supervisor (several workers) or, with `--workers 1`, the
supervisor with one worker; embedded mode (`--bus memory`) is the same with
an in-process bus.
"""

from __future__ import annotations

import asyncio
import os

from common import settings
from node.config import NodeConfig
from common.logs import setup_logging
from node.supervisor import Supervisor

SECRETS_ENV = "RINGCAST_JWT_SECRETS"
API_KEYS_ENV = "RINGCAST_API_KEYS"  # backend API keys, NAME=SECRET comma-separated (node.api_keys)

DESCRIPTION = """\
Run an edge node: a supervisor and --workers worker processes. Worker i
listens on --host:(--port + i) and is one shard of the ring, with the shard id
NODE_ID:PORT (--node-id, default the advertised host) and the public URL clients
are given (--public-url, default ws://ADVERTISED_HOST:PORT/ws). Each worker
serves GET /ws (WebSocket), /route, /ring, /healthz, /readyz and /metrics; a node
started alone (no control plane ring, no --nodes) routes among its own workers.
With --bus memory (and --workers 1) it runs embedded, without Redis.
"""


def main(argv: list[str]) -> int:
    # The documented name of the signing keys' variable is plural (it holds a list).
    environ = dict(os.environ)
    if SECRETS_ENV in environ:
        environ.setdefault(settings.env_name("jwt_secret", "node"), environ[SECRETS_ENV])
    if API_KEYS_ENV in environ:
        environ.setdefault(settings.env_name("api_key", "node"), environ[API_KEYS_ENV])
    config = settings.load(
        NodeConfig, argv, prog="ringcast node", description=DESCRIPTION, section="node", environ=environ
    )
    setup_logging(config.log_level, component="supervisor")
    return asyncio.run(Supervisor(config).run())
