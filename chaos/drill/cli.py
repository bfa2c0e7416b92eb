"""`ringcast drill SCENARIO`: break a cluster on purpose under verified load, and say whether it held.

Owns the command line, the run order every drill shares and its time bound:
start the cluster (or use the one named by --urls), bring the resuming
client population up, publish steadily, let the scenario inject its fault,
wait for recovery, keep going a while, stop publishing, let members catch
up, then measure, judge, and write the JSON, Markdown and PNG reports. It
also owns the live progress line and cleanup: every process the drill
started is stopped by PID on success, failure, Ctrl-C or SIGTERM.

It must not define faults or thresholds (chaos/drill/scenarios.py) nor the
meaning of the numbers (chaos/drill/measure.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import signal
import sys
import time
from pathlib import Path

from chaos.drill.cluster import DrillCluster
from chaos.drill.measure import judge, measure
from chaos.drill.population import Population, PopulationSize
from chaos.drill.report import write_all
from chaos.drill.scenarios import SCENARIOS, DrillContext, Scenario, control_for
from chaos.eventually import Timeout, eventually
from chaos.drill.client import Ledger

EXIT_PASS, EXIT_FAIL, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
SAMPLE_INTERVAL_S = 0.25  # connected-members sampling; worker RSS every 4th sample
PROGRESS_INTERVAL_S = 0.5
STARTUP_SLACK_S = 60.0  # time bound on top of the scenario's phases: connecting, settling, reports


def _epilog() -> str:
    lines = [
        "Every drill passes only with: 0 acked messages lost, 0 duplicates, 0 out of order, every member",
        "connected and receiving again (a message published after the fault) within its recovery bound, and",
        "(full runs only) p99 latency after recovery <= max(250 ms, 2 x p99 before the fault).",
        "",
        "scenarios (recovery bound full | --short; extra thresholds):",
        "",
    ]
    for scenario in SCENARIOS.values():
        full, short = scenario.thresholds(False), scenario.thresholds(True)
        lines.append(f"  {scenario.name:<16} {scenario.summary}")
        lines.append(f"  {'':<16} injects: {scenario.injects}")
        lines.append(f"  {'':<16} recovery <= {full.max_recovery_s:g} s | {short.max_recovery_s:g} s"
                     + "".join(f"; {k}: {v}" for k, v in full.extra.items()))
        lines.append("")
    lines += [
        "Exit code: 0 PASS, 1 FAIL, 2 scenario not available (or bad flags), 130 interrupted.",
        "Reports: drill-<scenario>-<UTC time>.json / .md / .png in --out. See docs/drills.md.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringcast drill",
        description="Run one failover drill: steady verified load with resuming clients, one injected fault, "
                    "then PASS or FAIL against the scenario's thresholds, with JSON, Markdown and PNG reports.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=list(SCENARIOS), help="the fault to inject")
    parser.add_argument("--short", action="store_true", help="the CI-sized version (small population, short phases)")
    parser.add_argument("--out", default=".", help="directory for the reports (default: the current directory)")
    parser.add_argument("--clients", type=int, help="override the number of verifying members")
    parser.add_argument("--rooms", type=int, help="override the number of rooms")
    parser.add_argument("--publishers", type=int, help="override the number of publishers")
    parser.add_argument("--rate", type=float, help="override the total publish rate (messages per second)")
    parser.add_argument("--urls", help="comma-separated worker WebSocket URLs of a running cluster to drill "
                                       "instead of starting one (kill-worker, redis-pause, reconnect-storm, slow-consumer)")
    parser.add_argument("--redis-url", default="", help="with --urls: the cluster's Redis URL (for reports)")
    parser.add_argument("--redis-pid", type=int, help="with --urls: PID of its redis-server (redis-pause needs it)")
    parser.add_argument("--fleet", choices=["netns"], help=(
        "run on a fleet of three hosts made of Linux network namespaces (root only; chaos/drill/fleet.py): "
        "host1 Redis + a node, host2 control replica A + a node, host3 control replica B (leading) + a node, "
        "nodes bound to 0.0.0.0, clients in the root namespace, on a private bridge with addresses from "
        "198.18.0.0/15 (198.18.0.0/24 unless another fleet uses it). "
        "kill-node and partition (partition needs it)"))
    parser.add_argument("--workers-per-node", type=int, help="with --fleet: workers per node (default 2; 1 with --short)")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    parser.add_argument("--node-flags", default="", help=(
        "extra flags for every node the drill starts, one shell-quoted string (e.g. \"--presence-rule 'drill:*'"
        " --presence-events-rule 'drill:*'\" to measure presence under the fault); not with --urls or --fleet"))
    return parser


def _size(scenario: Scenario, args: argparse.Namespace) -> PopulationSize:
    size = scenario.size(args.short)
    overrides = {"clients": args.clients, "rooms": args.rooms, "publishers": args.publishers,
                 "publish_rate_per_s": args.rate}
    return dataclasses.replace(size, **{k: v for k, v in overrides.items() if v is not None})


class Progress:
    """One status line, rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name = name
        self.quiet = quiet
        self.phase = "starting"
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0

    def show(self, ctx: DrillContext | None, rss_mb: float | None) -> None:
        if self.quiet or ctx is None:
            return
        now = time.monotonic()
        if not self.tty and now - self._last_print < 5.0:
            return
        self._last_print = now
        ledger = ctx.ledger
        second = int(ledger.now()) - 1
        line = (f"[{self.name}] {self.phase:<11} t={ledger.now():6.1f}s connected={ledger.connected}/"
                f"{len(ctx.population.members)} delivered/s={ledger.delivered_per_s.get(second, 0)} "
                f"acked={sum(len(v) for v in ledger.acked.values())} errors={sum(ledger.errors.values())} "
                f"gaps={ledger.gaps_while_connected} dup={ledger.duplicates}"
                + (f" workers_rss={rss_mb:.0f}MB" if rss_mb is not None else ""))
        if self.tty:
            sys.stderr.write("\r" + line.ljust(150)[:150])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


async def _sample(ctx: DrillContext, samples: list[dict], progress: Progress) -> None:
    count = 0
    rss: dict[int, int] = {}
    while True:
        if count % 4 == 0:
            rss = await asyncio.to_thread(ctx.cluster.worker_rss)
        samples.append({"t": round(ctx.ledger.now(), 3), "connected": ctx.ledger.connected, "rss": rss})
        if count % int(PROGRESS_INTERVAL_S / SAMPLE_INTERVAL_S) == 0:
            progress.show(ctx, sum(rss.values()) / 1e6 if rss else None)
        count += 1
        await asyncio.sleep(SAMPLE_INTERVAL_S)


def _receiving_again(ctx: DrillContext) -> bool:
    members = ctx.population.members
    return ctx.population.all_connected() and all(m.first_after_fault_s is not None for m in members)


async def _until_recovered(ctx: DrillContext, scenario: Scenario, timeout_s: float) -> None:
    """Until every member receives again and the scenario's server-side outcome happened, or `timeout_s`.

    Running out of time is not an error here: the numbers say it (no
    recovery time, or one over its bound) and the judge fails the run.
    """
    async def recovered() -> bool:  # async: read on the loop that updates it
        return _receiving_again(ctx) and scenario.server_side_done(ctx)

    try:
        await eventually(recovered, what="recovery", timeout_s=timeout_s, interval_s=0.1)
    except Timeout:
        pass


async def run_drill(scenario: Scenario, args: argparse.Namespace, cluster: DrillCluster, control) -> dict:
    """Run the drill's phases against `cluster`; returns the report (not yet written)."""
    started = time.time()
    ledger = Ledger()
    size = _size(scenario, args)
    timing = scenario.timing(args.short)
    population = Population(size, cluster.urls, cluster.room_prefix(f"drill:{scenario.name}:", size.rooms), ledger,
                            liveness_s=cluster.client_liveness_s)
    ctx = DrillContext(cluster, population, ledger, args.short, control=control)
    progress = Progress(scenario.name, args.quiet)
    samples: list[dict] = []
    failures: list[str] = []
    connect_timeout_s = 30.0 + size.clients / 50
    bound_s = connect_timeout_s + timing.warmup_s + timing.recovery_bound_s + timing.after_s + timing.settle_s \
        + STARTUP_SLACK_S
    sampler = asyncio.create_task(_sample(ctx, samples, progress))
    lost, lost_detail = 0, []
    watcher_failures: list[str] = []
    try:
        async with asyncio.timeout(bound_s):
            progress.phase = "connecting"
            await population.start(connect_timeout_s)
            ctx.mark("publish_start")
            population.publish(True)
            progress.phase = "warm-up"
            await asyncio.sleep(timing.warmup_s)
            progress.phase = "fault"
            await scenario.inject(ctx)
            progress.phase = "recovering"
            await _until_recovered(ctx, scenario, timing.recovery_bound_s)
            progress.phase = "after"
            await asyncio.sleep(timing.after_s)
            population.publish(False)
            ctx.mark("publish_stop")
            progress.phase = "settling"
            await population.settle(timing.settle_s)
            ctx.mark("settled")
            progress.phase = "measuring"
            if ctx.watchers:
                await asyncio.wait(ctx.watchers, timeout=timing.recovery_bound_s)
    except TimeoutError:
        failures.append(f"the drill hit its time bound ({bound_s:.0f} s) in phase {progress.phase!r}")
    except Exception as exc:  # noqa: BLE001 - a drill that breaks is a FAIL with its reason, never a traceback
        failures.append(f"the drill failed in phase {progress.phase!r}: {exc!r}")
    finally:
        sampler.cancel()
        for task in ctx.watchers:
            task.cancel()
        outcomes = await asyncio.gather(sampler, *ctx.watchers, return_exceptions=True)
        # A measurement that broke is a FAIL with its reason, not a missing number (CancelledError is
        # no Exception: a watcher still waiting at the bound only leaves its detail unset).
        watcher_failures = [f"a measurement task failed: {outcome!r}"
                            for outcome in outcomes if isinstance(outcome, Exception)]
        progress.done()
        await scenario.cleanup(ctx)
        lost, lost_detail = population.missing(), population.missing_detail()
        await population.close()

    for mark in ("publish_start", "fault_start", "fault_end", "publish_stop"):
        ctx.marks.setdefault(mark, ledger.now())
    results = measure(ledger, population.members, size.clients, ctx.marks, samples, lost, lost_detail)
    crashed = population.crashed_clients()
    if crashed:  # a drill client bug must not pass for a server failure (or hide one)
        failures.append(f"{len(crashed)} drill clients crashed, first: {crashed[0]}")
    if not failures:
        failures += judge(results, scenario.thresholds(args.short))
        failures += scenario.judge_extra(ctx, results)
    failures += watcher_failures
    last_second = int(max(ledger.now(), 1)) + 1
    return {
        "scenario": scenario.name,
        "verdict": "FAIL" if failures else "PASS",
        "failures": failures,
        "command": "ringcast drill " + " ".join(shlex.quote(a) for a in args.argv),
        "injects": scenario.injects,
        "measures": scenario.measures,
        "short": args.short,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "duration_s": time.time() - started,
        "size": dataclasses.asdict(size),
        "cluster": {"urls": cluster.urls, "redis": cluster.redis_url, "started_by_drill": cluster.owned,
                    "node_logs": [n.log_path for n in cluster.nodes], **cluster.describe()},
        "client_liveness_s": cluster.client_liveness_s,
        "thresholds": scenario.thresholds(args.short).describe(),
        "marks": {k: round(v, 3) for k, v in ctx.marks.items()},
        "details": {k: v for k, v in ctx.details.items() if not k.startswith("_")},
        "results": results,
        "timeline": {
            "seconds": list(range(last_second)),
            "delivered_per_s": [ledger.delivered_per_s.get(s, 0) for s in range(last_second)],
            "acked_per_s": [ledger.acked_per_s.get(s, 0) for s in range(last_second)],
            "sample_t": [s["t"] for s in samples],
            "connected": [s["connected"] for s in samples],
            "workers_rss_mb": [round(sum(s["rss"].values()) / 1e6, 1) for s in samples],
        },
    }


async def _run_cancellable(scenario: Scenario, args: argparse.Namespace, cluster: DrillCluster, control) -> dict:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)  # unwinds through every finally: clients closed, then processes
    return await run_drill(scenario, args, cluster, control)


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    scenario = SCENARIOS[args.scenario]
    why_not = scenario.unavailable()
    if why_not:
        print(f"ringcast drill {scenario.name}: not available yet: {why_not}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.urls and scenario.needs_local_cluster:
        print(f"ringcast drill {scenario.name}: needs a cluster it starts itself (drop --urls)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if scenario.needs_fleet and not args.fleet:
        print(f"ringcast drill {scenario.name}: runs only on a fleet of hosts: add --fleet netns (root)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.fleet and (args.urls or not scenario.fleet_ok):
        fleet_scenarios = ", ".join(s.name for s in SCENARIOS.values() if s.fleet_ok)
        print(f"ringcast drill {scenario.name}: --fleet runs {fleet_scenarios} (and not with --urls)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.node_flags and (args.urls or args.fleet):
        print(f"ringcast drill {scenario.name}: --node-flags applies to the nodes it starts (not with --urls or --fleet)",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    out_dir = Path(args.out)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # while starting processes: unwind and stop them
    cluster: DrillCluster | None = None
    control = None
    try:
        if args.urls:
            cluster = DrillCluster.external([u.strip() for u in args.urls.split(",") if u.strip()], args.redis_url,
                                            args.redis_pid)
        elif args.fleet:
            from chaos.drill.fleet import FleetCluster
            from chaos.netns import FleetUnavailable
            try:
                cluster = FleetCluster.start(args.workers_per_node or (1 if args.short else 2))
            except FleetUnavailable as exc:
                print(f"ringcast drill {scenario.name}: no fleet: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            control = cluster.control_a  # reachable from the clients' namespace whichever host a drill cuts
        else:
            cluster = DrillCluster.start_local(scenario.layout, shlex.split(args.node_flags))
        if scenario.needs_control and control is None:
            control = control_for(cluster)
            control.start()  # assigned first: an interrupt while it starts still stops it
        try:
            import uvloop
            report = uvloop.run(_run_cancellable(scenario, args, cluster, control))
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            report = asyncio.run(_run_cancellable(scenario, args, cluster, control))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\nringcast drill {scenario.name}: interrupted; stopped every process it started", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # do not interrupt the cleanup itself
        if control is not None and not args.fleet:
            control.stop()
        if cluster is not None:
            cluster.stop()  # a fleet stops its control replicas and removes its namespaces too
        signal.signal(signal.SIGTERM, previous)
    files = write_all(out_dir, report)
    results = report["results"]
    print(f"{report['verdict']} {scenario.name}: recovery {results['recovery_s']} s, lost {results['lost']}, "
          f"duplicates {results['duplicates']}, client errors {results['client_errors_total']}, "
          f"p99 before/during/after {results['latency']['before']['p99_ms']}/{results['latency']['during']['p99_ms']}/"
          f"{results['latency']['after']['p99_ms']} ms")
    for failure in report["failures"]:
        print(f"  reason: {failure}")
    print(f"  reports: {' '.join(path for path in files.values() if path)}")
    if report.get("plot_error"):
        print(f"  {report['plot_error']}")
    return EXIT_PASS if report["verdict"] == "PASS" else EXIT_FAIL
