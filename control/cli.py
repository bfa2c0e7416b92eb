"""`ringcast control`: run one control replica.

Owns turning flags, environment (`RINGCAST_CONTROL_*`, shared settings also
`RINGCAST_*`, the admin token also `RINGCAST_ADMIN_TOKEN`) and the `[control]`
section of a TOML file (shared keys at its top level) into a
`ControlConfig`, and starting the replica.
"""

from __future__ import annotations

import asyncio

from control.config import ControlConfig
from control.service import ControlService
from common import settings
from common.logs import setup_logging

DESCRIPTION = """\
Run a control plane replica: it watches the workers' heartbeats in Redis,
declares silent workers dead, publishes the ring (key <prefix>ring), carries
out drain / undrain / rebalance, and serves the operator API (/v1/...).
Run several against the same Redis for high availability: one leads (Redis
lease), the others serve reads and take over when it dies.
"""


def main(argv: list[str]) -> int:
    config = settings.load(ControlConfig, argv, prog="ringcast control", description=DESCRIPTION, section="control")
    setup_logging(config.log_level, component="control", replica=config.name)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(ControlService(config).run())
    return uvloop.run(ControlService(config).run())
