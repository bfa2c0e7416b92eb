"""The `control-pause` drill: the leading control replica freezes past its lease and wakes up later.

Owns one scenario, modelled on `control-kill` (chaos/drill/scenarios.py):
the leader is SIGSTOPped (a GC pause, a stalled VM), a standby replica takes
the lease, an operator drains worker 0 through it, and the frozen replica is
SIGCONTinued. It passes when no message was lost (the common judge), worker 0
drained, and the operator's drain was not reverted by the replica that woke
up: the member record still says `draining`, worker 0 stays out of the ring,
no `undrain` was logged, and the standby still leads. Every control-plane
write is fenced by the lease (`control.store`), which is what this checks
end to end.

It starts the standby itself and stops it, and continues the frozen replica
(by PID) in `cleanup`, whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import signal

from chaos.cluster import ControlProcess, free_port
from chaos.drill.measure import Thresholds
from chaos.drill.scenarios import DrillContext, _node_states, _WithControl, seconds_until, worker_id
from chaos.eventually import Timeout, eventually


def _leads(replica: ControlProcess) -> bool | None:
    """Whether the replica says it leads; None while it does not answer (it is frozen)."""
    status, body = replica.get("/healthz")
    return bool(body.get("leader")) if status == 200 else None


def _ticks(replica: ControlProcess) -> float:
    return replica.metric("ringcast_control_ticks_total")


class ControlPause(_WithControl):
    name = "control-pause"
    summary = "the leading control replica is frozen past its lease; the standby drains worker 0; the frozen one wakes"
    injects = ("SIGSTOP to the leading `ringcast control` replica; once a standby leads, POST drain of worker 0 "
               "there; then SIGCONT")
    measures = "takeover, drain complete, the drain still in force after the old leader woke up, loss, client errors"

    def window_s(self, short: bool) -> float:
        return 1.0 if short else 2.0

    def thresholds(self, short: bool) -> Thresholds:
        base = super().thresholds(short)
        base.extra = {
            "client-visible errors": "0 after the pause began (reconnect notices are expected)",
            "drain completes": "worker 0 reports drained within the recovery bound",
            "drain not reverted": "after the old leader wakes: worker 0 desired draining, out of the ring, "
                                  "no undrain event, the standby still leads",
        }
        return base

    def server_side_done(self, ctx: DrillContext) -> bool:
        return ctx.details.get("verified_after_wake_s") is not None

    async def inject(self, ctx: DrillContext) -> None:
        assert ctx.control is not None and ctx.control.proc is not None
        old = ctx.control
        bound_s = self.timing(ctx.short).recovery_bound_s
        drained = worker_id(ctx, 0)
        standby = ControlProcess(port=free_port(), redis_url=ctx.cluster.redis_url, admin_token=old.admin_token)
        ctx.details["_standby"] = standby  # assigned before it starts: cleanup stops it whatever happens
        await asyncio.to_thread(standby.start)
        await eventually(lambda: _leads(old) is True and _leads(standby) is False,
                         what="the first replica leading, the standby following", timeout_s=20)
        await eventually(lambda: drained in _node_states(standby), what="worker 0 known to control", timeout_s=20)

        ctx.fault_started()
        os.kill(old.proc.pid, signal.SIGSTOP)
        ctx.details["_frozen_pid"] = old.proc.pid
        ctx.details["takeover_s"] = await seconds_until(lambda: _leads(standby) is True, ctx,
                                                        "the standby to take the lease", bound_s, 0.1)
        if ctx.details["takeover_s"] is not None:
            status, answer = await asyncio.to_thread(standby.call, "POST", f"/v1/nodes/{drained}/drain",
                                                     {"windowS": self.window_s(ctx.short)})
            ctx.details["drain_answer"] = {"status": status, **answer}
        os.kill(old.proc.pid, signal.SIGCONT)
        ctx.details.pop("_frozen_pid")
        ctx.fault_ended()
        if ctx.details.get("drain_answer", {}).get("status") != 202:
            return
        ctx.watch("drained_s", seconds_until(
            lambda: _node_states(standby).get(drained) == "drained", ctx, "worker 0 drained", bound_s, 0.1))
        ctx.watch("verified_after_wake_s", self._verify_after_wake(ctx, old, standby, drained, bound_s))

    async def _verify_after_wake(self, ctx: DrillContext, old: ControlProcess, standby: ControlProcess,
                                 drained: str, bound_s: float) -> float | None:
        """Once the old leader answers again and the standby has ticked twice since, record what stands."""
        try:
            await eventually(lambda: _leads(old) is False, what="the woken replica to answer as a follower",
                             timeout_s=bound_s)
            for _ in range(2):
                start = await asyncio.to_thread(_ticks, standby)
                await eventually(lambda: _ticks(standby) > start, what="a tick of the standby", timeout_s=bound_s)
        except Timeout:
            return None
        status, nodes = await asyncio.to_thread(standby.get, "/v1/nodes")
        view = {n["id"]: n for n in nodes.get("nodes", [])}.get(drained, {}) if status == 200 else {}
        _, events = await asyncio.to_thread(standby.get, "/v1/events")
        ctx.details["after_wake"] = {
            "desired": view.get("desired"), "in_ring": view.get("inRing"),
            "undrain_events": sum(1 for e in events.get("events", []) if e.get("kind") == "undrain"),
            "standby_leads": _leads(standby), "woken_leads": _leads(old),
        }
        return round(ctx.since_fault(), 3)

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        failures = []
        if ctx.details.get("takeover_s") is None:
            failures.append("the standby never took the lease while the leader was frozen")
        elif ctx.details.get("drain_answer", {}).get("status") != 202:
            failures.append(f"the standby refused the drain: {ctx.details.get('drain_answer')}")
        elif ctx.details.get("drained_s") is None:
            failures.append("worker 0 never reported drained")
        after = ctx.details.get("after_wake")
        expected = {"desired": "draining", "in_ring": False, "undrain_events": 0,
                    "standby_leads": True, "woken_leads": False}
        if after is None:
            failures.append("the state after the old leader woke up was never read")
        elif after != expected:
            failures.append(f"the operator's drain did not stand after the old leader woke up: {after}, "
                            f"expected {expected}")
        errors = results["client_errors_after_fault"]
        if errors:
            failures.append(f"clients saw errors after the pause began: {errors}")
        return failures

    async def cleanup(self, ctx: DrillContext) -> None:
        frozen = ctx.details.pop("_frozen_pid", None)
        if frozen is not None:
            try:
                os.kill(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
        standby = ctx.details.pop("_standby", None)
        if standby is not None:
            await asyncio.to_thread(standby.stop)
