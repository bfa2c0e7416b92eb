"""The node supervisor: starts, watches and restarts one host's worker processes.

Owns the process tree of a node host: worker i runs `python -m node.launch`
on port `port + i`, its settings (secrets included, and the node's advertised
host and node id, resolved once here so every worker agrees) written to its stdin
(`node.launch.handover`), never in its argv or environment; a worker that
exits unexpectedly is restarted after a capped exponential backoff (reset
once it has stayed up for a while), and
every restart is logged and exposed by the new worker as
`ringcast_worker_restarts`. SIGTERM/SIGINT makes every worker shut down
gracefully; stragglers are killed after their shutdown timeout. It serves no
traffic and never touches Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

from node.config import NodeConfig
from common.settings import ENV_PREFIX
from node.launch import MODULE, handover
from router.backoff import BackoffPolicy

log = logging.getLogger("ringcast.supervisor")


@dataclass
class WorkerSlot:
    index: int
    config: NodeConfig
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    consecutive_crashes: int = 0
    watcher: asyncio.Task | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config.resolved()  # the advertised host and node id, once for every worker
        # No jitter: one host's crash loop is not a herd, and operators read the delays in the log.
        self.restart_backoff = BackoffPolicy(
            base_s=config.restart_backoff_base_s, factor=2.0, cap_s=config.restart_backoff_cap_s, jitter=0.0
        )
        self.slots = [WorkerSlot(i, self.config.for_worker(i)) for i in range(config.workers)]
        self.stopping = False
        self._stopped = asyncio.Event()

    async def _spawn(self, slot: WorkerSlot) -> None:
        # The worker's settings come on stdin; the operator's RINGCAST_* variables (the Redis URL, the
        # signing keys) are the supervisor's business and stay out of the worker's environment.
        env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
        slot.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", MODULE, env=env, stdin=asyncio.subprocess.PIPE,
        )
        assert slot.process.stdin is not None
        try:
            slot.process.stdin.write(handover(slot.config, slot.restarts))
            await slot.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):  # it died before reading: the watcher restarts it
            log.warning("worker %d (%s, pid %d) exited before reading its settings",
                        slot.index, slot.config.shard_id, slot.process.pid)
        finally:
            slot.process.stdin.close()
        slot.started_at = asyncio.get_running_loop().time()
        log.info("started worker %d (%s at %s) pid %d listening on %s:%d",
                 slot.index, slot.config.shard_id, slot.config.url, slot.process.pid, slot.config.host, slot.config.port)

    async def _watch(self, slot: WorkerSlot) -> None:
        loop = asyncio.get_running_loop()
        while True:
            assert slot.process is not None
            code = await slot.process.wait()
            if self.stopping:
                log.info("worker %d (pid %d) exited with %s: %s at %s",
                         slot.index, slot.process.pid, code, slot.config.shard_id, slot.config.url)
                return
            lived_s = loop.time() - slot.started_at
            if lived_s >= self.config.restart_reset_after_s:
                slot.consecutive_crashes = 0
            slot.consecutive_crashes += 1
            delay = self.restart_backoff.delay_s(slot.consecutive_crashes - 1)
            slot.restarts += 1
            log.warning(
                "worker %d (%s at %s, pid %d) died with %s after %.1fs; restart %d in %.2fs",
                slot.index, slot.config.shard_id, slot.config.url, slot.process.pid, code, lived_s, slot.restarts, delay,
            )
            await asyncio.sleep(delay)
            if self.stopping:
                return
            await self._spawn(slot)
            if self.stopping:  # SIGTERM arrived while it was being spawned: it must stop too
                assert slot.process is not None
                slot.process.send_signal(signal.SIGTERM)

    def request_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("supervisor stopping %d workers", len(self.slots))
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGTERM)
        self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        grace_s = self.config.shutdown_timeout_s + 5.0
        try:
            async with asyncio.timeout(grace_s):
                # Re-read the slots each round: a worker respawned during the stop is waited for too.
                while any(s.process is not None and s.process.returncode is None for s in self.slots):
                    await asyncio.gather(*(s.process.wait() for s in self.slots if s.process is not None))
        except TimeoutError:
            for slot in self.slots:
                if slot.process is not None and slot.process.returncode is None:
                    log.error("worker %d (%s) did not stop within %.0fs; killing pid %d",
                              slot.index, slot.config.shard_id, grace_s, slot.process.pid)
                    slot.process.kill()
            await asyncio.gather(*(s.process.wait() for s in self.slots if s.process is not None))
        self._stopped.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        for slot in self.slots:
            await self._spawn(slot)
            slot.watcher = asyncio.create_task(self._watch(slot))
        log.info(
            "supervisor pid %d: node %s, %d workers on %s ports %d-%d, advertised as %s: %s",
            os.getpid(), self.config.node_id, len(self.slots), self.config.host, self.config.port,
            self.config.port + len(self.slots) - 1, self.config.advertise_host,
            ", ".join(f"{slot.config.shard_id} {slot.config.url}" for slot in self.slots),
        )
        await self._stopped.wait()
        for slot in self.slots:
            if slot.watcher is not None:
                slot.watcher.cancel()
        return 0
