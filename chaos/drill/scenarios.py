"""The failover drills: what each one runs on, what it breaks, and what it must achieve.

Owns, per scenario: the cluster layout it starts, the population size (full
and `--short`), how long it runs before and after the fault, the fault
itself (`inject`), the server-side signals it times (worker back, bus down
and back, slow consumers cut, drain complete), and its pass thresholds
beyond the common ones (no loss, no duplicate, no disorder, everyone
receiving again). The runner (chaos/drill/cli.py) does everything else the
same way for all of them.

It must not own the clients (chaos/drill/client.py) nor the arithmetic
of results (chaos/drill/measure.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from dataclasses import dataclass, field

import psutil

from chaos.cluster import ControlProcess, free_port, metric_value
from chaos.drill.cluster import DrillCluster, http_url, get_json
from chaos.drill.measure import Thresholds
from chaos.drill.population import Population, PopulationSize
from chaos.eventually import Timeout, eventually
from chaos.drill.stalled_reader import StalledReader
from chaos.drill.client import Ledger


@dataclass(frozen=True)
class Timing:
    warmup_s: float  # steady verified load before the fault ("before" latency window)
    after_s: float  # steady load after recovery ("after" latency window)
    recovery_bound_s: float  # longest the runner waits for recovery before giving up (FAIL)
    settle_s: float = 10.0  # longest it waits, publishing stopped, for members to catch up


@dataclass
class DrillContext:
    cluster: DrillCluster
    population: Population
    ledger: Ledger
    short: bool
    marks: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # scenario-specific measurements, seconds from the fault
    control: ControlProcess | None = None
    watchers: list[asyncio.Task] = field(default_factory=list)  # server-side signals timed while the drill goes on

    def watch(self, name: str, coro) -> None:
        """Run `coro` alongside the drill; its result is stored as details[name] (seconds from the fault).

        details[name] is None until then, and stays None if the drill ends first.
        """
        self.details[name] = None

        async def record() -> None:
            self.details[name] = await coro
        self.watchers.append(asyncio.create_task(record()))

    def mark(self, name: str) -> float:
        self.marks[name] = self.ledger.now()
        return self.marks[name]

    def fault_started(self) -> None:
        self.mark("fault_start")

    def fault_ended(self) -> None:
        self.mark("fault_end")
        self.ledger.fault_end_ms = time.time() * 1000

    def since_fault(self) -> float:
        return self.ledger.now() - self.marks["fault_start"]


async def seconds_until(probe, ctx: DrillContext, what: str, timeout_s: float, interval_s: float = 0.05
                        ) -> float | None:
    """Seconds from the fault until `probe()` holds, or None if it did not within `timeout_s`.

    A plain probe runs in a thread (it may do HTTP); one that raises (a worker
    still down) is asked again. None is a measurement, not an error: the
    scenario's judge turns it into a FAIL with its reason.
    """
    try:
        await eventually(probe, what=what, timeout_s=timeout_s, interval_s=interval_s)
    except Timeout:
        return None
    return round(ctx.since_fault(), 3)


class Scenario:
    name = ""
    summary = ""  # one line for --help
    injects = ""
    measures = ""
    layout: list[tuple[str, int]] = [("127.0.0.1", 2)]  # (loopback host, workers) per `ringcast node`
    needs_local_cluster = False  # the fault needs processes the drill started (not a cluster named by flags)
    needs_control = False
    fleet_ok = False  # runs on the netns fleet too (--fleet netns, chaos/drill/fleet.py)
    needs_fleet = False  # runs only there

    def size(self, short: bool) -> PopulationSize:
        if short:
            return PopulationSize(clients=40, rooms=4, publishers=2, publish_rate_per_s=40)
        return PopulationSize(clients=1000, rooms=50, publishers=10, publish_rate_per_s=200)

    def timing(self, short: bool) -> Timing:
        return Timing(warmup_s=2.0, after_s=2.0, recovery_bound_s=20.0) if short else \
            Timing(warmup_s=10.0, after_s=10.0, recovery_bound_s=60.0)

    def thresholds(self, short: bool) -> Thresholds:
        # Short (CI) runs judge correctness; their only time bound is generous, since CI machines are noisy.
        return Thresholds(max_recovery_s=20.0) if short else Thresholds(max_recovery_s=10.0, max_p99_after_ms=250.0)

    def unavailable(self) -> str | None:
        return None

    def server_side_done(self, ctx: DrillContext) -> bool:
        """Whether the server-side outcome the drill waits for has happened (besides members receiving again)."""
        return True

    async def inject(self, ctx: DrillContext) -> None:
        raise NotImplementedError

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        return []

    async def cleanup(self, ctx: DrillContext) -> None:
        pass


class KillWorker(Scenario):
    name = "kill-worker"
    summary = "SIGKILL one worker; its supervisor restarts it; its clients resume elsewhere"
    injects = "SIGKILL to worker 0 of a 2-worker node (no goodbye, no reconnect notice)"
    measures = "client detection, worker back (/readyz with a new PID), reconnect, recovery, loss, latency"

    async def inject(self, ctx: DrillContext) -> None:
        pid = ctx.cluster.worker_pid(0)
        assert pid is not None, "worker 0 is not running"
        ctx.details["killed_pid"] = pid
        ctx.fault_started()
        os.kill(pid, signal.SIGKILL)
        ctx.fault_ended()
        cluster = ctx.cluster
        ctx.watch("worker_back_s", seconds_until(
            lambda: cluster.worker_pid(0) not in (None, pid) and cluster.ready(0), ctx,
            "worker 0 restarted with a new PID and ready", 30))

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        if ctx.details.get("worker_back_s") is None:
            return ["worker 0 was not seen restarted (new PID) and ready before the drill ended"]
        return []


class KillNode(Scenario):
    name = "kill-node"
    summary = "a whole node (supervisor and workers: on 127.0.0.2, or host3 of the fleet) dies at once"
    injects = "SIGKILL to the supervisor and every worker of the last node (127.0.0.2; host3 with --fleet) (a host lost)"
    measures = ("client detection, reconnect to the surviving nodes, recovery, loss, latency; with a control plane "
                "(the fleet): the ring without the node")
    layout = [("127.0.0.1", 2), ("127.0.0.2", 2)]
    needs_local_cluster = True
    fleet_ok = True

    def server_side_done(self, ctx: DrillContext) -> bool:
        return ctx.control is None or ctx.details.get("ring_without_node_s") is not None

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        if ctx.control is not None and ctx.details.get("ring_without_node_s") is None:
            return ["the control plane never dropped the killed node's workers from the ring"]
        return []

    async def inject(self, ctx: DrillContext) -> None:
        node = ctx.cluster.nodes[-1]
        victims = {f"{node.host}:{port}" for port in node.ports}
        ctx.details["killed_workers"] = sorted(victims)
        assert node.proc is not None
        supervisor = psutil.Process(node.proc.pid)
        pids = [supervisor.pid] + [child.pid for child in supervisor.children()]
        ctx.details["killed_pids"] = pids
        ctx.fault_started()
        for pid in pids:  # the supervisor first, so that nothing restarts the workers
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ctx.fault_ended()
        node.proc.wait(timeout=10)
        if ctx.control is not None:  # the fleet: time the control plane's detection too
            control = ctx.control
            ctx.watch("ring_without_node_s", seconds_until(
                lambda: not victims & set(_ring_member_ids(control)), ctx, "the killed node's workers out of the ring",
                self.timing(ctx.short).recovery_bound_s, 0.1))


class _BusFault(Scenario):
    """Drills that break Redis: they time every worker's bus subscriber going down and coming back."""

    cuts_every_subscriber = False  # whether the fault closes every worker's subscriber connection for sure

    async def start_watching_bus(self, ctx: DrillContext) -> None:
        """Start timing the bus; call just before the fault (it reads the baseline first)."""
        def all_connected() -> list[tuple[bool, int]] | None:
            view = bus_view(ctx.cluster)
            return view if all(resynced for resynced, _ in view) else None

        before = await eventually(all_connected, what="every worker's bus subscriber connected before the fault",
                                  timeout_s=20)
        ctx.watch("bus", watch_bus(ctx, [count for _, count in before], self.cuts_every_subscriber,
                                   self.timing(ctx.short).recovery_bound_s))

    def server_side_done(self, ctx: DrillContext) -> bool:
        return "bus" in ctx.details  # keep publishing until every worker's bus is back (or the bound)

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        bus = ctx.details.get("bus")
        if bus is None or bus["back_on_all_workers_s"] is None:
            return [f"not every worker's bus subscriber was back and resynced after the fault: {bus}"]
        return []


class RedisRestart(_BusFault):
    name = "redis-restart"
    summary = "Redis stops and starts again empty (no persistence): new epochs, resume says so"
    injects = "SIGTERM to redis-server, then a new one on the same port, empty"
    measures = "bus down/back (resynced) on every worker (/metrics), publish errors, recovery, loss, resume reasons"
    needs_local_cluster = True
    cuts_every_subscriber = True  # Redis exits: every subscriber connection is closed

    async def inject(self, ctx: DrillContext) -> None:
        await self.start_watching_bus(ctx)
        ctx.fault_started()
        assert ctx.cluster.redis is not None
        await asyncio.to_thread(ctx.cluster.redis.restart)
        ctx.fault_ended()
        ctx.details["redis_back_s"] = round(ctx.since_fault(), 3)


class RedisRollback(_BusFault):
    name = "redis-rollback"
    summary = "Redis restarts from an older RDB snapshot: rooms' seq goes back; epochs must change and members be told"
    injects = ("SAVE (an RDB snapshot), publishing goes on for rollback_window_s (2 s; 1 s short), then SIGTERM to "
               "redis-server (it does not save) and a new one on the same port and directory: it loads the snapshot")
    measures = "bus down/back (resynced) on every worker, recovery, loss, the epoch_changed notices members got"
    needs_local_cluster = True
    cuts_every_subscriber = True  # Redis exits: every subscriber connection is closed

    def rollback_window_s(self, short: bool) -> float:
        return 1.0 if short else 2.0

    async def inject(self, ctx: DrillContext) -> None:
        redis = ctx.cluster.redis
        assert redis is not None
        await asyncio.to_thread(redis.command, "SAVE")  # what Redis will come back with
        await asyncio.sleep(self.rollback_window_s(ctx.short))  # messages Redis will forget, delivered live
        await self.start_watching_bus(ctx)
        ctx.fault_started()
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(redis.start)  # same --dir: loads the snapshot
        ctx.fault_ended()
        ctx.details["redis_back_s"] = round(ctx.since_fault(), 3)

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        failures = super().judge_extra(ctx, results)
        if results.get("resumes", {}).get("epoch_changed", 0) < 1:
            failures.append(f"no member was told of the rollback (no epoch_changed): resumes {results.get('resumes')}")
        return failures


class RedisPause(_BusFault):
    name = "redis-pause"
    summary = "SIGSTOP Redis for a few seconds, then SIGCONT: a hung (not dead) bus"
    injects = "SIGSTOP to redis-server, SIGCONT after pause_s (5 s; 3 s with --short)"
    measures = "bus down/back (resynced) on every worker (/metrics), publish errors, recovery, loss"

    def pause_s(self, short: bool) -> float:
        return 3.0 if short else 5.0

    async def inject(self, ctx: DrillContext) -> None:
        await self.start_watching_bus(ctx)
        ctx.fault_started()
        ctx.cluster.pause_redis()
        try:
            await asyncio.sleep(self.pause_s(ctx.short))
        finally:
            ctx.cluster.resume_redis()
        ctx.fault_ended()
        ctx.details["paused_s"] = self.pause_s(ctx.short)


BUS_CONNECTED = "ringcast_bus_connected"  # 0 from a lost subscriber until its re-subscribe is confirmed, then 1
BUS_RECONNECTS = "ringcast_bus_reconnects_total"  # +1 per (re)connection, counted when the re-subscribe is confirmed


def bus_view(cluster: DrillCluster) -> list[tuple[bool, int]]:
    """Per worker: (subscriber connected and resynced, reconnects so far), both from one /metrics page."""
    view = []
    for index in range(len(cluster.urls)):
        page = cluster.metrics_page(index)
        view.append((metric_value(page, BUS_CONNECTED) == 1, int(metric_value(page, BUS_RECONNECTS))))
    return view


async def watch_bus(ctx: DrillContext, reconnects_before: list[int], cuts_every_subscriber: bool,
                    timeout_s: float) -> dict:
    """When the first worker's bus subscriber is seen down, and when every worker's is back.

    Back means resynced, not just connected: /healthz says busConnected as
    soon as the subscriber's socket is open, but the worker counts the
    reconnect, serves its rooms again and fills the gap only when the PONG
    after its re-SUBSCRIBEs arrives (node/redis_subscriber.py), and that is what
    `ringcast_bus_connected` shows. When the fault closes every subscriber
    (Redis exits), a worker whose reconnect counter has not moved has not
    even noticed yet: it is not back either.
    """
    cluster = ctx.cluster
    down_at: dict[int, float] = {}
    seen: list[tuple[bool, int]] = []

    def back_everywhere() -> bool:
        view = bus_view(cluster)
        seen[:] = view
        for index, (resynced, _) in enumerate(view):
            if not resynced and index not in down_at:
                down_at[index] = round(ctx.since_fault(), 3)
        return "fault_end" in ctx.marks and all(
            resynced and (count > before or not cuts_every_subscriber)
            for (resynced, count), before in zip(view, reconnects_before))

    back_s = await seconds_until(back_everywhere, ctx, "every worker's bus subscriber back and resynced", timeout_s)
    return {
        "back_on_all_workers_s": back_s,
        "down_detected_s": min(down_at.values()) if down_at else None,
        "workers_seen_down_by_polling": len(down_at),  # a 50 ms poll can miss a short outage ...
        # ... the counter cannot (read together with the verdict above: its last view)
        "subscriber_reconnects_per_worker": [count - before for (_, count), before in zip(seen, reconnects_before)],
    }


class ReconnectStorm(Scenario):
    name = "reconnect-storm"
    summary = "every client's socket dropped at once (client side); thousands reconnect and resume together"
    injects = "transport.abort() on every member's socket in the same loop turn (a network blip or LB reset)"
    measures = "reconnect spread (p50/p99/max, peak reconnects per second), refusals, recovery, loss"

    def size(self, short: bool) -> PopulationSize:
        if short:
            return PopulationSize(clients=300, rooms=10, publishers=2, publish_rate_per_s=40)
        return PopulationSize(clients=3000, rooms=100, publishers=10, publish_rate_per_s=100)

    def thresholds(self, short: bool) -> Thresholds:
        base = Thresholds(max_recovery_s=30.0) if short else Thresholds(max_recovery_s=15.0, max_p99_after_ms=250.0)
        base.extra = {"members reconnected": "all", "workers restarted": "none (same PIDs before and after)"}
        return base

    async def inject(self, ctx: DrillContext) -> None:
        ctx.details["worker_pids_before"] = ctx.cluster.worker_pids()
        ctx.fault_started()
        ctx.population.drop_all()
        ctx.fault_ended()

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        fault = ctx.marks["fault_start"]
        times = sorted(t - fault for t in ctx.ledger.reconnects if t >= fault)
        per_second: dict[int, int] = {}
        for t in times:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        ctx.details["reconnects"] = len(times)
        if times:
            ctx.details["reconnect_spread_s"] = {
                "p50": round(times[len(times) // 2], 3), "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
                "max": round(times[-1], 3)}
            ctx.details["peak_reconnects_per_s"] = max(per_second.values())
        failures = []
        if len(times) < results["clients"]:
            failures.append(f"only {len(times)} of {results['clients']} members reconnected after the drop")
        after = ctx.cluster.worker_pids()
        ctx.details["worker_pids_after"] = after
        if sorted(after) != sorted(ctx.details["worker_pids_before"]):
            failures.append(f"a worker restarted during the storm: PIDs {ctx.details['worker_pids_before']} -> {after}")
        return failures


class SlowConsumer(Scenario):
    name = "slow-consumer"
    summary = "clients that stop reading: they are cut, worker memory stays bounded, others are unaffected"
    injects = "stalled readers (4 KiB receive buffer, never read) join every room on worker 0"
    measures = "time until every stalled reader is cut, worker RSS growth, other members' loss/latency/disconnects"
    MAX_WORKER_GROWTH_MB = 100.0  # a stalled reader may cost at most max_outbound_bytes (512 KiB) plus kernel buffers

    def stalled(self, short: bool) -> int:
        return 4 if short else 20

    def size(self, short: bool) -> PopulationSize:
        if short:
            return PopulationSize(clients=30, rooms=3, publishers=3, publish_rate_per_s=90, payload_bytes=4000)
        return PopulationSize(clients=200, rooms=10, publishers=5, publish_rate_per_s=200, payload_bytes=4000)

    def thresholds(self, short: bool) -> Thresholds:
        base = super().thresholds(short)
        base.extra = {"stalled readers cut": "all, within the recovery bound",
                      "other members disconnected": "0",
                      "worker RSS growth": f"<= {self.MAX_WORKER_GROWTH_MB:g} MB"}
        return base

    def server_side_done(self, ctx: DrillContext) -> bool:
        return "all_cut_s" in ctx.details  # keep publishing until every stalled reader is cut (or the bound)

    async def inject(self, ctx: DrillContext) -> None:
        cluster = ctx.cluster
        before = await asyncio.to_thread(cluster.metric, 0, "ringcast_slow_consumer_disconnects_total")
        readers = [StalledReader(cluster.urls[0], ctx.population.rooms) for _ in range(self.stalled(ctx.short))]
        ctx.details["stalled_readers"] = len(readers)
        ctx.details["_readers"] = readers
        ctx.fault_started()
        for reader in readers:  # one after the other: a burst of joins is not what this drill is about
            await reader.open()
        ctx.fault_ended()
        ctx.watch("all_cut_s", seconds_until(
            lambda: cluster.metric(0, "ringcast_slow_consumer_disconnects_total") - before >= len(readers),
            ctx, f"{len(readers)} stalled readers cut as slow consumers", self.timing(ctx.short).recovery_bound_s,
            interval_s=0.2))

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        failures = []
        if ctx.details.get("all_cut_s") is None:
            failures.append("not every stalled reader was cut off as a slow consumer")
        disconnects = [t for t in ctx.ledger.disconnects if t >= ctx.marks["fault_start"]]
        ctx.details["member_disconnects_after_fault"] = len(disconnects)
        if disconnects:
            failures.append(f"{len(disconnects)} ordinary members were disconnected by the slow consumers")
        growth = results["memory"]["max_worker_growth_mb"]
        if growth is not None and growth > self.MAX_WORKER_GROWTH_MB:
            failures.append(f"a worker's RSS grew {growth} MB (max {self.MAX_WORKER_GROWTH_MB:g} MB)")
        return failures

    async def cleanup(self, ctx: DrillContext) -> None:
        for reader in ctx.details.pop("_readers", []):
            reader.close()


class _WithControl(Scenario):
    """Drills that need the control plane: they start a `ringcast control` replica next to the cluster."""

    needs_local_cluster = True
    needs_control = True

    def unavailable(self) -> str | None:
        try:
            import control.cli  # noqa: F401 - `ringcast control` is what the drill starts
        except ImportError as exc:
            return f"the control plane is not available in this build ({exc})"
        return None


def control_for(cluster: DrillCluster) -> ControlProcess:
    """A control replica for `cluster` (not started: the caller starts it inside its cleanup scope)."""
    return ControlProcess(port=free_port(), redis_url=cluster.redis_url, admin_token=secrets.token_hex(16))


def _ring_member_ids(control: ControlProcess) -> list[str]:
    status, body = control.get("/v1/ring")
    return [member["id"] for member in body.get("members", [])] if status == 200 else []


def ring_ids(ctx: DrillContext) -> list[str]:
    assert ctx.control is not None
    status, body = ctx.control.get("/v1/ring")
    return [member["id"] for member in body.get("members", body.get("nodes", []))] if status == 200 else []


def worker_id(ctx: DrillContext, url_index: int) -> str:
    url = ctx.cluster.urls[url_index]
    return url.split("//", 1)[1].split("/", 1)[0]


class Drain(_WithControl):
    name = "drain"
    summary = "drain worker 0 through the control API; its clients are steered away without loss"
    injects = "POST /v1/nodes/{worker 0}/drain (windowS 2; 1 with --short) on `ringcast control`"
    measures = "drain complete (worker reports drained), reconnect, recovery, loss, client errors (must be none)"

    def window_s(self, short: bool) -> float:
        return 1.0 if short else 2.0

    def thresholds(self, short: bool) -> Thresholds:
        base = super().thresholds(short)
        errors = "0 after the drain began (reconnect notices are expected; refusals, cuts and BUS_UNAVAILABLE are not)"
        base.extra = {"client-visible errors": errors,
                      "drain completes": "worker 0 reports drained within the recovery bound"}
        return base

    async def inject(self, ctx: DrillContext) -> None:
        assert ctx.control is not None
        control = ctx.control
        drained = worker_id(ctx, 0)
        await eventually(lambda: drained in _node_states(control), what="worker 0 known to control", timeout_s=20)
        ctx.fault_started()
        status, answer = await asyncio.to_thread(control.call, "POST", f"/v1/nodes/{drained}/drain",
                                                 {"windowS": self.window_s(ctx.short)})
        ctx.fault_ended()
        ctx.details["drain_answer"] = {"status": status, **answer}
        if status != 202:
            return
        ctx.watch("drained_s", seconds_until(
            lambda: _node_states(control).get(drained) == "drained", ctx, "worker 0 drained",
            self.timing(ctx.short).recovery_bound_s, 0.1))

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        failures = []
        if ctx.details.get("drain_answer", {}).get("status") != 202:
            failures.append(f"the control API refused the drain: {ctx.details.get('drain_answer')}")
        elif ctx.details.get("drained_s") is None:
            failures.append("worker 0 never reported drained")
        errors = results["client_errors_after_fault"]
        if errors:
            failures.append(f"clients saw errors after the drain began: {errors}")
        return failures


def _node_states(control: ControlProcess) -> dict[str, str]:
    status, body = control.get("/v1/nodes")
    return {n["id"]: n.get("state", "") for n in body.get("nodes", [])} if status == 200 else {}


class ControlKill(_WithControl):
    name = "control-kill"
    summary = "the control plane is SIGKILLed while traffic flows; the data plane keeps serving on the last ring"
    injects = "SIGKILL to the only `ringcast control` replica"
    measures = "member disconnects (must be none), workers' ring still served, loss, latency"

    def thresholds(self, short: bool) -> Thresholds:
        base = super().thresholds(short)
        base.extra = {"member disconnects": "0", "workers' ring after the kill": "unchanged, both workers in it"}
        return base

    async def inject(self, ctx: DrillContext) -> None:
        assert ctx.control is not None
        await eventually(lambda: len(_worker_ring(ctx)) == len(ctx.cluster.urls),
                         what="every worker in the ring the workers serve", timeout_s=20)
        ctx.details["ring_before"] = _worker_ring(ctx)
        ctx.fault_started()
        ctx.control.kill()
        ctx.fault_ended()

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        failures = []
        disconnects = [t for t in ctx.ledger.disconnects if t >= ctx.marks["fault_start"]]
        if disconnects:
            failures.append(f"{len(disconnects)} members were disconnected after the control plane died")
        after = _worker_ring(ctx)
        ctx.details["ring_after"] = after
        if after != ctx.details["ring_before"]:
            failures.append(f"the workers' ring changed without a control plane: {ctx.details['ring_before']} -> {after}")
        return failures


def _worker_ring(ctx: DrillContext) -> list[str]:
    status, body = get_json(http_url(ctx.cluster.urls[-1], "/ring"))
    if status != 200:
        return []
    members = body.get("members") or body.get("nodes") or []
    return sorted(m.get("id", "") for m in members)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    KillWorker(), KillNode(), Drain(), RedisRestart(), RedisRollback(), RedisPause(), ControlKill(), ReconnectStorm(),
    SlowConsumer(),
)}

from chaos.drill.control_pause import ControlPause  # noqa: E402 - builds on the classes above
from chaos.drill.partition import Partition  # noqa: E402 - builds on the classes above
SCENARIOS[ControlPause.name] = ControlPause()
SCENARIOS[Partition.name] = Partition()
