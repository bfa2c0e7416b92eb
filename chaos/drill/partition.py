"""The `partition` drill: one host of the fleet is cut off the network while messages flow, then healed.

Owns one scenario, on the netns fleet only (chaos/drill/fleet.py): host3
runs a node and control replica B, which leads when the drill starts. The
fault takes host3's link down on the bridge (chaos/netns.py `cut`): nothing
gets in or out, no FIN, no RST. Then, in order, it times:

1. detection: cut -> the control plane's ring without host3's workers
   (read through replica A on host2, which Redis can still reach);
2. leadership: B, cut off from Redis, stops leading (asked from inside
   host3, the only place it can still be asked) and A takes the lease;
3. client recovery: cut -> every member that was on host3 joined on
   another host (they notice through the client-side liveness check,
   chaos/drill/client.py LIVENESS_PING_AFTER_S, since a cut link sends no
   FIN);
4. heal (once 1-3 happened, or at the bound): the link comes back up;
5. rejoin: heal -> host3's workers back in the ring (after the control
   plane's hold-down), B following, one leader;
6. consistency: after the rebalance the leader starts when they rejoin,
   every connected member sits on the ring's owner of its room.

Loss, duplicates and order are judged as in every drill (by each member,
per room, by seq). It must not own the fleet nor the clients.
"""

from __future__ import annotations

import asyncio
import collections

from chaos.drill.measure import Thresholds, percentile
from chaos.drill.scenarios import DrillContext, Scenario, Timing, seconds_until
from chaos.eventually import eventually
from router.ring import EmptyRing, Ring


def _rebalance(cluster) -> dict:
    status, body = cluster.control_a.get("/v1/rebalance")
    return body if status == 200 else {}


class Partition(Scenario):
    name = "partition"
    summary = "host3 (a node and the leading control replica) loses its link under load, then gets it back"
    injects = ("host3's link on the fleet's bridge down (no FIN, no RST, both ways); restored once host3's workers "
               "left the ring and its clients resumed elsewhere (or at the bound)")
    measures = ("detection (cut -> ring without host3), leadership handover, what host3's clients saw and when they "
                "resumed elsewhere, rejoin after heal, rebalance, members on their room's owner, loss, order")
    needs_local_cluster = True
    needs_control = True
    needs_fleet = True
    fleet_ok = True
    CUT_HOST = 2  # host3
    MIN_CUT_S = 2.0  # the link stays down at least this long after the last thing the drill waits for
    # cut -> every member of the cut host joined elsewhere and staying there: liveness (<= 3 s), a backoff (<= 2 s)
    # and a join; a `moved` hint back to the silent host is not followed (ClientCore.host_unreachable). The rest
    # is margin for a loaded machine (the full run measured 4.0 s; before that rule, 10.3 s).
    MAX_CLIENT_RESUME_S = 15.0
    MAX_CYCLE_S = 45.0  # cut -> every member connected and receiving after the heal's rebalance

    def timing(self, short: bool) -> Timing:
        # The recovery bound covers the whole cycle: detection (dead_after_s 3), heal, hold-down (5) and rebalance.
        return Timing(warmup_s=2.0, after_s=2.0, recovery_bound_s=60.0) if short else \
            Timing(warmup_s=10.0, after_s=10.0, recovery_bound_s=90.0)

    def thresholds(self, short: bool) -> Thresholds:
        # Here "every member connected and receiving again" spans the whole cycle: the rebalance after the rejoin
        # moves members too (planned reconnects), so its bound covers detection, heal, hold-down and rebalance.
        base = Thresholds(max_recovery_s=self.MAX_CYCLE_S) if short else \
            Thresholds(max_recovery_s=self.MAX_CYCLE_S, max_p99_after_ms=250.0)
        base.extra = {
            "detection": "host3's workers leave the control plane's ring while it is cut",
            "cut-off leader": "if B (host3) led, it stops leading while cut and A takes the lease",
            "host3's clients": f"every one resumed on another host while host3 is cut, within "
                               f"{self.MAX_CLIENT_RESUME_S:g} s of the cut",
            "rejoin": "after the heal, host3's workers are back in the ring, with one leader",
            "consistency": "after the rebalance, every connected member is on its room's owner in the ring",
        }
        return base

    def server_side_done(self, ctx: DrillContext) -> bool:
        return ctx.details.get("partition") is not None  # the whole cycle, heal and rebalance included

    async def inject(self, ctx: DrillContext) -> None:
        cluster = ctx.cluster
        host = cluster.netns.hosts[self.CUT_HOST]
        victims = set(cluster.worker_ids(host))
        await eventually(lambda: victims <= set(cluster.ring_ids()), what="host3's workers in the ring", timeout_s=20)
        leader_before = await asyncio.to_thread(cluster.leader_id)
        rebalance_before = (await asyncio.to_thread(_rebalance, cluster)).get("generation", 0)
        members = ctx.population.members
        affected = [i for i, m in enumerate(members) if m.connected and cluster.host_of_url(m.url) is host]
        affected_publishers = sum(1 for p in ctx.population.publishers if cluster.host_of_url(p.url) is host)
        ctx.details["cut_host"] = {"host": host.name, "address": host.address, "workers": sorted(victims),
                                   "members_on_it": len(affected), "publishers_on_it": affected_publishers,
                                   "leader_before": leader_before}
        ctx.fault_started()
        await asyncio.to_thread(cluster.netns.cut, host)
        ctx.fault_ended()  # the cut is a state: members must receive what is published from now on, elsewhere
        ctx.watch("partition", self._cycle(ctx, host, victims, set(affected), leader_before, rebalance_before))

    async def _cycle(self, ctx: DrillContext, host, victims: set[str], affected: set[int], leader_before: str | None,
                     rebalance_before: int) -> dict:
        cluster = ctx.cluster
        bound_s = self.timing(ctx.short).recovery_bound_s
        out: dict = {}
        cut_b = leader_before == f"control-{host.name}"
        members = ctx.population.members

        def affected_resumed() -> bool:
            return all(members[i].connected and cluster.host_of_url(members[i].url) is not host for i in affected)

        async def b_stepped_down() -> bool:
            return await asyncio.to_thread(cluster.replica_says_it_leads, cluster.control_b, host) is False

        waits = {
            "ring_without_host_s": seconds_until(lambda: not victims & set(cluster.ring_ids()), ctx,
                                                 "host3's workers out of the ring", bound_s, 0.1),
            "affected_clients_resumed_s": seconds_until(affected_resumed, ctx,
                                                        "host3's members joined elsewhere", bound_s, 0.1),
        }
        if cut_b:
            waits["cut_leader_stepped_down_s"] = seconds_until(b_stepped_down, ctx, "B to stop leading", bound_s, 0.2)
            waits["new_leader_s"] = seconds_until(lambda: cluster.leader_id() == "control-host2", ctx,
                                                  "A to take the lease", bound_s, 0.1)
        results = await asyncio.gather(*waits.values())
        out.update(dict(zip(waits, results)))
        out["leader_during_cut"] = await asyncio.to_thread(cluster.leader_id)
        out["cut_replica_says_it_leads_during_cut"] = await asyncio.to_thread(
            cluster.replica_says_it_leads, cluster.control_b, host)
        await asyncio.sleep(self.MIN_CUT_S)

        heal_at = ctx.since_fault()
        await asyncio.to_thread(cluster.netns.heal, host)
        ctx.mark("heal")
        out["healed_at_s"] = round(heal_at, 3)
        rejoined = await seconds_until(lambda: victims <= set(cluster.ring_ids()), ctx,
                                       "host3's workers back in the ring", bound_s, 0.1)
        out["rejoined_s"] = rejoined
        out["rejoin_after_heal_s"] = None if rejoined is None else round(rejoined - heal_at, 3)

        def rebalanced() -> bool:
            state = _rebalance(cluster)
            return state.get("generation", 0) > rebalance_before and bool(state.get("done"))
        out["rebalance_done_s"] = await seconds_until(rebalanced, ctx, "the rebalance after the rejoin", bound_s, 0.2)
        consistent = await seconds_until(lambda: not self._off_owner(ctx), ctx,
                                         "every connected member on its room's owner", 20.0, 0.2)
        out["members_on_owner_s"] = consistent
        out["members_off_owner"] = self._off_owner(ctx)[:10]
        out["leader_after_heal"] = await asyncio.to_thread(cluster.leader_id)
        out["cut_replica_says_it_leads_after_heal"] = await asyncio.to_thread(
            cluster.replica_says_it_leads, cluster.control_b, host)
        out["ring_after"] = await asyncio.to_thread(cluster.ring_ids)
        out["cut_host_clients_saw"] = self._what_they_saw(ctx, affected, host)
        return out

    @staticmethod
    def _off_owner(ctx: DrillContext) -> list[dict]:
        """Connected members whose worker is not the ring's owner of their room (publishers are in several rooms)."""
        body = ctx.cluster.ring()
        try:
            ring = Ring.from_dict(body)
            owners = {room: ring.route(room).url for room in ctx.population.rooms}
        except (EmptyRing, KeyError, ValueError):
            return [{"ring": body}]
        return [{"room": m.room, "on": m.url, "owner": owners[m.room], "ring_epoch": ring.epoch, "history": _history(m)}
                for m in ctx.population.members if m.connected and m.url != owners[m.room]]

    @staticmethod
    def _what_they_saw(ctx: DrillContext, affected: set[int], host) -> dict:
        """How the members that were on the cut host noticed, and where and when they joined again."""
        fault = ctx.marks["fault_start"]
        members = ctx.population.members
        noticed, reasons, resumed_on, resumed_after = [], collections.Counter(), collections.Counter(), []
        for i in affected:
            member = members[i]
            cuts = [(t, reason) for t, reason, _ in member.disconnect_log if t >= fault]
            if cuts:
                noticed.append(cuts[0][0] - fault)
                reasons[cuts[0][1]] += 1
            joins = [(t, url) for t, url in member.join_log if t >= fault]
            if joins:
                resumed_after.append(joins[0][0] - fault)
                resumed_on[ctx.cluster.host_of_url(joins[0][1]).name] += 1
        return {
            "members": len(affected),  # members connected to the cut host at the cut
            "how_they_noticed": dict(reasons),
            "noticed_after_cut_s": _spread(noticed),
            "joined_elsewhere_after_cut_s": _spread(resumed_after),
            "first_join_after_cut_on": dict(resumed_on),
        }

    def judge_extra(self, ctx: DrillContext, results: dict) -> list[str]:
        cycle = ctx.details.get("partition")
        if cycle is None:
            return ["the partition cycle (cut, detection, heal, rejoin, rebalance) did not finish within the bound"]
        failures = []
        host = ctx.details["cut_host"]
        if cycle["ring_without_host_s"] is None:
            failures.append(f"the control plane never dropped {host['host']}'s workers from the ring while it was cut")
        if cycle["affected_clients_resumed_s"] is None:
            failures.append(f"not every member of {host['host']} resumed on another host while it was cut")
        elif cycle["affected_clients_resumed_s"] > self.MAX_CLIENT_RESUME_S:
            failures.append(f"{host['host']}'s members took {cycle['affected_clients_resumed_s']} s to resume elsewhere "
                            f"(max {self.MAX_CLIENT_RESUME_S:g} s)")
        if host["leader_before"] == f"control-{host['host']}":
            if cycle.get("cut_leader_stepped_down_s") is None:
                failures.append("the replica cut off from Redis kept saying it leads")
            if cycle.get("new_leader_s") is None:
                failures.append("replica A never took the lease while B was cut off")
        if host["members_on_it"] == 0:
            failures.append(f"no member was on {host['host']} when it was cut: the drill proved nothing")
        if cycle["rejoined_s"] is None:
            failures.append(f"{host['host']}'s workers did not rejoin the ring after the heal")
        if cycle["rebalance_done_s"] is None:
            failures.append("the rebalance after the rejoin did not complete")
        if cycle["members_on_owner_s"] is None:
            failures.append(f"members left off their room's owner after the rebalance: {cycle['members_off_owner']}")
        if cycle["cut_replica_says_it_leads_after_heal"] is not False or cycle["leader_after_heal"] is None:
            failures.append(f"leadership after the heal: leader {cycle['leader_after_heal']}, B says it leads: "
                            f"{cycle['cut_replica_says_it_leads_after_heal']}")
        return failures


def _history(member) -> dict:
    """How a member got where it is: its last joins, cuts, failed connects, the last `moved` hint for its
    room and the hosts its client will not follow a hint to (for the report of a member left off its owner)."""
    return {
        "joins": [(round(t, 3), url) for t, url in member.join_log[-6:]],
        "disconnects": [(round(t, 3), reason, url) for t, reason, url in member.disconnect_log[-6:]],
        "connect_failures": member.connect_failures[-6:],
        "last_moved": member.core.last_moved.get(member.room),
        "hints_not_followed_to": member.core.unreachable_hosts,
    }


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"p50": round(percentile(values, 0.5), 3), "max": round(max(values), 3), "n": len(values)}
