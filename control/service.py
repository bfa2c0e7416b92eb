"""One control replica: wires Redis, the lease, the leader loop and the API, and runs them.

Owns the replica's lifetime: start the API (every replica serves reads), keep
refreshing the leader lease, run the leader loop while holding it, and on
SIGTERM/SIGINT stop serving and release the lease so a follower takes over
at once instead of after the lease runs out. Each replica, leader or not,
also announces itself in the `control:replicas` presence hash with each lease
round (entry TTL `lease_s`), so service discovery lists every replica. It
holds no state of its own: everything is in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from common.presence import Presence
from common.redis_connect import RedisTarget
from common.tasks import stop_tasks
from control.api import ControlApi
from control.config import ControlConfig
from common.keys import Keys
from control.leader import Controller
from control.lease import LeaderLease
from control.metrics import ControlMetrics
from control.store import ControlStore

log = logging.getLogger("ringcast.control")


class ControlService:
    def __init__(self, config: ControlConfig) -> None:
        self.config = config
        target = RedisTarget.from_settings(config)  # on redis+cluster://, a RedisCluster client and tagged keys
        self.keys = Keys(config.key_prefix, cluster=target.cluster)
        self.redis = target.client(timeout_s=config.redis_timeout_s)
        self.metrics = ControlMetrics(config.name)
        self.lease = LeaderLease(self.redis, self.keys.leader, config.name, config.url, config.lease_s)
        self.store = ControlStore(self.redis, self.keys, config.max_events)  # fenced by the controller, per term
        self.controller = Controller(config, self.store, self.lease, self.metrics)
        self.api = ControlApi(config, self.store, self.lease, self.controller, self.metrics)
        self.presence = Presence(self.redis, self.keys.control_replicas, config.name, config.url, config.lease_s)
        self._stop = asyncio.Event()

    async def _announce(self) -> None:
        """Refresh this replica's presence entry; best effort (the lease loop must keep its pace)."""
        try:
            await self.presence.announce()
        except Exception as exc:  # noqa: BLE001 - discovery only: a missed round shortens nothing else
            log.warning("could not announce replica %s in Redis: %s", self.config.name, exc)

    async def _keep_lease(self) -> None:
        was_leader = False
        while True:
            leading = await self.lease.refresh()
            self.metrics.leader.set(1 if leading else 0)
            if leading and not was_leader:
                log.info("replica %s leads", self.config.name)
                try:
                    await self.controller.announce({"replica": self.config.name, "url": self.config.url})
                except Exception:  # noqa: BLE001 - the event log is best effort; leading is not
                    log.warning("could not log the leadership event")
            elif was_leader and not leading:
                log.warning("replica %s no longer leads", self.config.name)
            was_leader = leading
            await self._announce()
            await asyncio.sleep(self.config.lease_renew_interval_s)

    async def run(self) -> int:
        if not self.config.token:
            log.warning("no admin token set: every mutation will be refused (set --admin-token or RINGCAST_ADMIN_TOKEN)")
        runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        tasks = [
            asyncio.create_task(self._keep_lease(), name="lease"),
            asyncio.create_task(self.controller.run(), name="leader-loop"),
        ]
        log.info("control replica %s serving on %s", self.config.name, self.config.url)
        await self._stop.wait()
        await stop_tasks(tasks)
        await self.lease.release()
        try:
            await self.presence.withdraw()
        except Exception as exc:  # noqa: BLE001 - the entry expires after lease_s anyway
            log.warning("could not withdraw replica %s from Redis: %s", self.config.name, exc)
        await runner.cleanup()
        await self.redis.aclose()
        log.info("control replica %s stopped", self.config.name)
        return 0

