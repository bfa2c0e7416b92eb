"""`ringcast router`: the route service's command line.

Owns turning flags, environment and config file into a `RouterConfig` and
running one `RouteService` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio

from common import settings
from common.logs import setup_logging
from router.config import RouterConfig
from router.service import RouteService

DESCRIPTION = """\
Run the route service: GET /route?room=R answers {room, node, url, epoch}
(the worker that owns R and the WebSocket URL to connect to), GET /ring shows
the ring's members, weights and epoch, GET /healthz says whether it is up.
It follows the ring the control plane publishes in Redis (--redis), or a
static list (--nodes), or both (the list until a ring is published).
Stateless: run as many as you like.
"""


def main(argv: list[str]) -> int:
    config = settings.load(RouterConfig, argv, prog="ringcast router", description=DESCRIPTION, section="router")
    setup_logging(config.log_level, component="router")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(RouteService(config).run())
    else:
        uvloop.run(RouteService(config).run())
    return 0
