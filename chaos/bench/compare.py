"""`ringcast bench compare`: ringcast and the tutorial's server, side by side in one sitting (issue 12).

Owns the yardstick: the scenarios at the issue's offered rates, running the
two sides in alternation (A B A B ..., each run on a fresh redis-server and a
fresh server, the same load generator and offered load), the ratio
ringcast/seed of every figure per round and its spread across rounds, the
saturation search (the offered rate stepped up until a run fails
`run_failure`'s criterion), the optional py-spy profile of ringcast's
workers per scenario, and the JSON + Markdown report. Each run goes through
chaos/bench/cli.py's `run_bench` (which starts and stops the servers by
PID); this module must not generate load or speak WebSocket itself, and
must not judge ringcast's code (it only measures).

    ringcast bench compare --rounds 3                       # one-room and many-rooms at the issue's rates
    ringcast bench compare --scenario many-rooms --saturation --rounds 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from chaos.bench.cli import build_parser as bench_parser
from chaos.bench.cli import run_bench
from chaos.load.wire import RINGCAST, SEED

# A run "holds" an offered rate when all of these are true (the saturation criterion, docs/benchmarks.md):
SAT_P99_MS = 100.0  # p99 latency in the measured window at most this
SAT_DELIVERED_FRACTION = 0.95  # delivered/s in the window at least this fraction of the offered deliveries/s
# ... and nothing lost, duplicated, skipped or reordered, no connect failure, no connection closed by the server.
SAT_START_FRACTION = 0.5  # the search starts at this fraction of the scenario's offered rate...
SAT_STEP_FACTOR = 1.25  # ...and multiplies it by this at each step (divides, if the first step failed)...
SAT_MAX_STEPS = 8  # ...at most this many times (then the point is reported as ">= the last rate held")
SAT_ATTEMPTS = 2  # runs of a step before it counts as failed (a held attempt holds the step)
PROFILE_RATE_HZ = 100  # py-spy samples per second
PROFILE_TOP = 10  # frames kept per profile summary
PROFILE_EXTRA_S = 30.0  # py-spy gets this long past its duration to write its file
PROFILE_LOOP_FRAME = "Runner.run (runners.py)"  # the event loop's entry in a worker's stacks (asyncio.Runner)


@dataclass(frozen=True)
class Scenario:
    """A fixed population: `connections` members in `rooms` rooms, `publishers` of them publishing."""

    name: str
    connections: int
    rooms: int
    publishers: int
    ringcast_workers: int  # ringcast's defaults for this shape; the tutorial's server runs one process
    offered_per_s: float  # deliveries per second offered (published/s x members per room)
    duration_s: float = 10.0
    warmup_s: float = 3.0

    @property
    def members_per_room(self) -> float:
        return self.connections / self.rooms

    def rate_per_publisher(self, offered_per_s: float) -> float:
        """Messages per second per publisher that offer `offered_per_s` deliveries per second."""
        if self.publishers == 0:
            return 0.0
        return offered_per_s / (self.publishers * self.members_per_room)


# The scenarios (issue 12): one room of 2,000 at 120,000 deliveries/s; 5,000 connections in 500 rooms,
# 500 publishers at 40,000/s; idle memory (10,000 members in 1,000 rooms, nobody publishes).
SCENARIOS = {
    "one-room": Scenario("one-room", 2000, 1, 1, 1, 120_000),
    "many-rooms": Scenario("many-rooms", 5000, 500, 500, 2, 40_000),
    "idle": Scenario("idle", 10_000, 1000, 0, 2, 0, duration_s=1.0, warmup_s=0.0),
}


@dataclass(frozen=True)
class Side:
    name: str
    server: str  # the wire dialect and what is started: RINGCAST or SEED
    node_args: tuple[str, ...] = ()  # ringcast only: extra `ringcast node` flags


# (key in the run's row, heading, unit); the ratio is A/B of each
METRICS = [
    ("offered_per_s", "offered deliveries/s", ""),
    ("delivered_per_s", "delivered/s", ""),
    ("server_cpu_percent", "server CPU (% of one core)", "%"),
    ("server_cpu_us_per_delivery", "server CPU per delivery", "µs"),
    ("server_user_us_per_delivery", "... of it in user space", "µs"),
    ("server_system_us_per_delivery", "... of it in the kernel", "µs"),
    ("server_deliveries_per_cpu_s", "deliveries per server CPU-second", ""),
    ("latency_p50_ms", "p50 latency", "ms"),
    ("latency_p99_ms", "p99 latency", "ms"),
    ("server_rss_per_connection_kib", "server RSS per connection", "KiB"),
    ("redis_cpu_us_per_publish", "Redis CPU per published message", "µs"),
    ("faults", "lost + duplicates + gaps + reordered", ""),
]


def row_of(result: dict, scenario: str, side: str, round_: int, offered_per_s: float) -> dict:
    """The figures of one run that the comparison keeps."""
    row = {"scenario": scenario, "side": side, "round": round_, "offered_per_s": offered_per_s,
           "faults": sum(result.get(k) or 0 for k in ("lost", "duplicates", "gaps", "reordered")),
           "failure": run_failure(result, offered_per_s)}
    for key in ("delivered_per_s", "server_cpu_percent", "server_cpu_us_per_delivery", "server_user_us_per_delivery",
                "server_system_us_per_delivery",
                "server_deliveries_per_cpu_s", "latency_p50_ms", "latency_p99_ms", "server_rss_per_connection_kib",
                "redis_cpu_us_per_publish", "redis_cpu_percent", "client_cpu_percent", "connections", "connect_failures",
                "closed_by_server", "published_per_s", "loadavg_1m_at_end", "workers", "command"):
        row[key] = result.get(key)
    return row


def run_failure(result: dict, offered_per_s: float) -> str | None:
    """Why a run did not hold its offered rate (the saturation criterion), or None when it did."""
    if result.get("connect_failures"):
        return f"{result['connect_failures']} connect failures"
    bad = {k: result.get(k) for k in ("lost", "duplicates", "gaps", "reordered", "closed_by_server") if result.get(k)}
    if bad:
        return ", ".join(f"{k} {v}" for k, v in bad.items())
    if offered_per_s <= 0:
        return None
    p99 = result.get("latency_p99_ms")
    if p99 is None or p99 > SAT_P99_MS:
        return f"p99 {p99} ms > {SAT_P99_MS:g} ms"
    delivered = result.get("delivered_per_s") or 0.0
    if delivered < SAT_DELIVERED_FRACTION * offered_per_s:
        return f"delivered {delivered:,.0f}/s < {SAT_DELIVERED_FRACTION:.0%} of {offered_per_s:,.0f}/s offered"
    return None


def spread(values: list[float]) -> dict | None:
    """Median, min, max and the values themselves; None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(rows: list[dict], a: str, b: str) -> dict:
    """{scenario: {metric: {"a": spread, "b": spread, "ratio": spread of the per-round ratios A/B}}}.

    Ratios are paired by round (the A and B runs that followed each other),
    so slow drift of the machine's load hits both sides of each ratio.
    """
    out: dict[str, dict] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        by_round: dict[int, dict[str, dict]] = {}
        for row in rows:
            if row["scenario"] == scenario:
                by_round.setdefault(row["round"], {})[row["side"]] = row
        metrics = {}
        for key, _, _ in METRICS:
            a_values = [r[a].get(key) for r in by_round.values() if a in r]
            b_values = [r[b].get(key) for r in by_round.values() if b in r]
            ratios = [ratio(r[a].get(key), r[b].get(key)) for r in by_round.values() if a in r and b in r]
            metrics[key] = {"a": spread(a_values), "b": spread(b_values), "ratio": spread(ratios)}
        out[scenario] = metrics
    return out


def saturation_point(steps: list[dict]) -> dict:
    """From one side's steps [{"offered_per_s", "failure"}]: the highest rate held below the lowest rate failed.

    `bounded`: no step failed, so the point is only a lower bound.
    """
    failed = [s for s in steps if s["failure"] is not None]
    lowest_failed = min(failed, key=lambda s: s["offered_per_s"]) if failed else None
    held = [s["offered_per_s"] for s in steps if s["failure"] is None
            and (lowest_failed is None or s["offered_per_s"] < lowest_failed["offered_per_s"])]
    return {"held_per_s": max(held) if held else None,
            "failed_at_per_s": lowest_failed["offered_per_s"] if lowest_failed else None,
            "why": lowest_failed["failure"] if lowest_failed else None, "bounded": lowest_failed is None}


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or value == 0:
        return f"{int(value):,}" if value == int(value) else f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _cell(s: dict | None, unit: str = "") -> str:
    if s is None:
        return "-"
    suffix = f" {unit}" if unit else ""
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{_num(s['median'])}{suffix}"
    return f"{_num(s['median'])}{suffix} ({_num(s['min'])}–{_num(s['max'])})"


def markdown_summary(summary: dict, a: str, b: str) -> str:
    lines = []
    for scenario, metrics in summary.items():
        lines += [f"### {scenario}", "",
                  f"| figure | {a} | {b} | ratio {a}/{b} |", "|---|---:|---:|---:|"]
        for key, heading, unit in METRICS:
            m = metrics[key]
            lines.append(f"| {heading} | {_cell(m['a'], unit)} | {_cell(m['b'], unit)} | {_cell(m['ratio'])} |")
        lines.append("")
    lines.append("Median over rounds (min–max); each ratio is taken per round (the A and B runs that followed "
                 "each other), then its median and range.")
    return "\n".join(lines) + "\n"


def markdown_saturation(saturation: dict, a: str, b: str, max_steps: int = SAT_MAX_STEPS,
                        start_fraction: float = SAT_START_FRACTION) -> str:
    lines = [f"| scenario | {a} holds | {b} holds | ratio {a}/{b} | {a} failed at | {b} failed at |",
             "|---|---:|---:|---:|---|---|"]

    def held(point: dict) -> str:
        if point["held_per_s"] is None:
            return "none"
        return ("≥ " if point["bounded"] else "") + f"{point['held_per_s']:,.0f}/s"

    def failed(point: dict) -> str:
        return "-" if point["failed_at_per_s"] is None else f"{point['failed_at_per_s']:,.0f}/s: {point['why']}"

    for scenario, sides in saturation.items():
        pa, pb = sides[a]["point"], sides[b]["point"]
        lines.append(f"| {scenario} | {held(pa)} | {held(pb)} | {_num(ratio(pa['held_per_s'], pb['held_per_s']))} "
                     f"| {failed(pa)} | {failed(pb)} |")
    lines.append("")
    for scenario, sides in saturation.items():
        for name in (a, b):
            steps = "; ".join(
                f"{st['offered_per_s']:,.0f}/s {'held' if st['failure'] is None else 'failed'} "
                f"(p99 {_num(st.get('latency_p99_ms'))} ms, {_num(st.get('delivered_per_s'))}/s"
                + (f", {len(st['attempts'])} attempts" if len(st.get("attempts") or []) > 1 else "") + ")"
                for st in sides[name].get("steps", []))
            if steps:
                lines.append(f"- {scenario}, {name}: {steps}")
    lines.append("")
    lines.append(f"A run holds its offered rate when p99 ≤ {SAT_P99_MS:g} ms, delivered/s ≥ "
                 f"{SAT_DELIVERED_FRACTION:.0%} of offered, and nothing is lost, duplicated, skipped or reordered "
                 f"(no connect failure, no connection closed by the server). Steps start at {start_fraction:g}x "
                 f"the scenario's offered rate and grow by {SAT_STEP_FACTOR:g}x (or shrink, when the first fails), at most "
                 f"{max_steps} steps; a failing step "
                 f"is run again, {SAT_ATTEMPTS} attempts in all, and holds if any attempt held.")
    return "\n".join(lines) + "\n"


# --- py-spy ------------------------------------------------------------------

def summarize_raw_profile(text: str, top: int = PROFILE_TOP) -> dict:
    """Top frames of a `py-spy record --format raw` file: by own samples (leaf) and by inclusive samples.

    The event loop's entry (PROFILE_LOOP_FRAME) and every frame above it
    (module start, `uvloop.run`) are in nearly every sample and say nothing
    about where the time goes: they are left out of the inclusive ranking. A
    leaf PROFILE_LOOP_FRAME is time in uvloop's C code (polling, reading
    sockets, running callbacks that are not Python frames).
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        below_loop = frames[len(frames) - frames[::-1].index(PROFILE_LOOP_FRAME):] if PROFILE_LOOP_FRAME in frames \
            else frames
        for name in set(below_loop):
            inclusive[name] = inclusive.get(name, 0) + n

    def top_of(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in ranked]

    return {"samples": total, "own": top_of(own) if total else [], "inclusive": top_of(inclusive) if total else []}


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`: lines of one function merged."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({os.path.basename(where)})" if where else name


class Profiler:
    """py-spy attached to each ringcast worker for the measured window (`--profile DIR`)."""

    def __init__(self, directory: str, label: str, duration_s: float) -> None:
        self.directory, self.label, self.duration_s = directory, label, duration_s
        self.procs: list[tuple[subprocess.Popen, str]] = []

    @staticmethod
    def binary() -> str | None:
        """py-spy on PATH or next to this Python (`pip install py-spy` into the venv), or None."""
        here = os.path.join(os.path.dirname(sys.executable), "py-spy")
        return shutil.which("py-spy") or (here if os.access(here, os.X_OK) else None)

    def attach(self, pids: list[int]) -> None:
        binary = self.binary()
        for pid in pids:
            path = os.path.join(self.directory, f"{self.label}-pid{pid}.txt")
            proc = subprocess.Popen(
                [binary, "record", "--nonblocking", "-r", str(PROFILE_RATE_HZ), "-d", str(max(1, int(self.duration_s))),
                 "-f", "raw", "-o", path, "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append((proc, path))

    def collect(self) -> list[dict]:
        out = []
        for proc, path in self.procs:
            try:
                proc.wait(timeout=self.duration_s + PROFILE_EXTRA_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            try:
                with open(path) as handle:
                    out.append({"file": path, **summarize_raw_profile(handle.read())})
            except OSError:
                out.append({"file": path, "error": f"py-spy wrote nothing (exit {proc.returncode})"})
        return out


# --- the sitting -------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringcast bench compare",
        description="ringcast and the tutorial's server (or two ringcast configurations) in alternation, one "
                    "sitting: per-scenario figures, ratios A/B with their spread, saturation points.")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=[],
                        help="repeatable (default: one-room and many-rooms)")
    parser.add_argument("--rounds", type=int, default=3, help="A B pairs per scenario at its offered rate (0: none)")
    parser.add_argument("--against", choices=(SEED, RINGCAST), default=SEED,
                        help="side B: the tutorial's server, or ringcast again with --b-node-arg")
    parser.add_argument("--node-arg", action="append", default=[], help="extra flag for ringcast's node (side A)")
    parser.add_argument("--b-node-arg", action="append", default=[], help="extra flag for side B's node (--against ringcast)")
    parser.add_argument("--workers", type=int, default=0,
                        help="ringcast's worker count in every scenario (default: the scenario's, the issue's "
                             "defaults); the tutorial's server always runs one process")
    parser.add_argument("--seed-dir", default="", help="the tutorial's server (default ../shared/seed_server)")
    parser.add_argument("--offered", type=float, default=0.0, help="offered deliveries/s (default: the scenario's)")
    parser.add_argument("--connections", type=int, default=0, help="override the scenario's population")
    parser.add_argument("--rooms", type=int, default=0)
    parser.add_argument("--publishers", type=int, default=-1)
    parser.add_argument("--duration", type=float, default=0.0, help="measured seconds (default: the scenario's)")
    parser.add_argument("--warmup", type=float, default=-1.0, help="warm-up seconds (default: the scenario's)")
    parser.add_argument("--procs", type=int, default=0, help="load processes (default: the bench's)")
    parser.add_argument("--saturation", action="store_true", help="also step the offered rate up until each side fails")
    parser.add_argument("--sat-max-steps", type=int, default=SAT_MAX_STEPS)
    parser.add_argument("--sat-start", type=float, default=SAT_START_FRACTION,
                        help="first step of the saturation search, as a fraction of the scenario's offered rate")
    parser.add_argument("--profile", default="",
                        help="directory: one more ringcast run per scenario with py-spy on its workers (not measured)")
    parser.add_argument("--out", default="", help="directory for compare.json and compare.md")
    return parser


def scenario_of(args: argparse.Namespace, name: str) -> Scenario:
    base = SCENARIOS[name]
    return Scenario(
        name, args.connections or base.connections, args.rooms or base.rooms,
        base.publishers if args.publishers < 0 else args.publishers, args.workers or base.ringcast_workers,
        args.offered or base.offered_per_s, args.duration or base.duration_s,
        base.warmup_s if args.warmup < 0 else args.warmup)


def run_side(side: Side, scenario: Scenario, offered_per_s: float, args: argparse.Namespace, label: str,
             profiler: Profiler | None = None) -> dict:
    """One run of one side through `ringcast bench --start-cluster`; the bench's result."""
    argv = ["--start-cluster", "--server", side.server,
            "--workers", str(scenario.ringcast_workers if side.server == RINGCAST else 1),
            "--connections", str(scenario.connections), "--rooms", str(scenario.rooms),
            "--publishers", str(scenario.publishers), "--rate", f"{scenario.rate_per_publisher(offered_per_s):g}",
            "--duration", f"{scenario.duration_s:g}", "--warmup", f"{scenario.warmup_s:g}", "--label", label]
    argv += [f"--node-arg={a}" for a in side.node_args]
    if side.server == SEED and args.seed_dir:
        argv += ["--seed-dir", args.seed_dir]
    if args.procs:
        argv += ["--procs", str(args.procs)]
    result = run_bench(bench_parser().parse_args(argv), profiler.attach if profiler else None)
    result["command"] = "ringcast bench " + " ".join(argv)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be at least 1")
    for flag in (*args.node_arg, *args.b_node_arg):
        if flag.split("=", 1)[0] == "--workers":  # the bench must know it too, to wait for every worker
            parser.error(f"set the worker count with --workers, not {flag!r} in --node-arg/--b-node-arg")
    names = args.scenario or ["one-room", "many-rooms"]
    a = Side(RINGCAST, RINGCAST, tuple(args.node_arg))
    b = Side(SEED, SEED) if args.against == SEED else Side("ringcast-b", RINGCAST, tuple(args.b_node_arg))
    if b.server == SEED:
        from chaos.bench.seed import SeedUnavailable, check_seed_dir

        try:
            check_seed_dir(args.seed_dir)
        except SeedUnavailable as exc:
            print(f"ringcast bench compare: {exc}", file=sys.stderr)
            return 2
    if args.profile and Profiler.binary() is None:
        print("ringcast bench compare: --profile needs py-spy (measuring only: .venv/bin/pip install py-spy)",
              file=sys.stderr)
        return 2
    scenarios = [scenario_of(args, n) for n in names]
    started = time.monotonic()
    rows: list[dict] = []
    total = len(scenarios) * args.rounds * 2
    done = 0
    for round_ in range(1, args.rounds + 1):
        for scenario in scenarios:
            for side in (a, b):
                done += 1
                _say(f"[{done}/{total}] {scenario.name} {side.name} round {round_}: "
                     f"{scenario.offered_per_s:,.0f} deliveries/s offered", started)
                result = run_side(side, scenario, scenario.offered_per_s, args,
                                  f"{scenario.name}-{side.name}-r{round_}")
                rows.append(row_of(result, scenario.name, side.name, round_, scenario.offered_per_s))
                _say(_row_line(rows[-1]), started)
    report: dict = {"a": a.name, "b": b.name, "rows": rows, "summary": summarize(rows, a.name, b.name),
                    "scenarios": [asdict(s) for s in scenarios], "node_args_a": list(a.node_args),
                    "node_args_b": list(b.node_args), "criterion": {
                        "p99_ms": SAT_P99_MS, "delivered_fraction": SAT_DELIVERED_FRACTION,
                        "start_fraction": args.sat_start, "step_factor": SAT_STEP_FACTOR,
                        "max_steps": args.sat_max_steps}}
    if args.saturation:
        report["saturation"] = _saturation(scenarios, a, b, args, started)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        report["profiles"] = {}
        for scenario in scenarios:
            if scenario.publishers == 0:
                continue
            _say(f"profile: {scenario.name} {a.name} with py-spy ({scenario.duration_s:g} s)", started)
            profiler = Profiler(args.profile, f"{scenario.name}-{a.name}", scenario.duration_s)
            run_side(a, scenario, scenario.offered_per_s, args, f"{scenario.name}-{a.name}-profile", profiler)
            report["profiles"][scenario.name] = profiler.collect()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    text = markdown(report)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "compare.json"), "w") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
        with open(os.path.join(args.out, "compare.md"), "w") as handle:
            handle.write(text)
        print(f"reports: {args.out}/compare.json, {args.out}/compare.md")
    return 0


def saturation_search(scenario: Scenario, sides: tuple[str, str], max_steps: int, run_one,
                      start_fraction: float = SAT_START_FRACTION) -> dict:
    """Step the offered rate until each side crosses its saturation point, the sides alternating (bounded).

    `run_one(side, offered_per_s, label)` runs one side once and returns its
    row (`row_of`). Each side starts at `start_fraction` x the scenario's
    rate; if it holds, it steps up by SAT_STEP_FACTOR until a step fails; if
    the first step fails, it steps down until one holds. A failing run is run
    once more at the same rate (SAT_ATTEMPTS in all) and the step holds when
    any attempt held: one p99 spike from another process on the shared
    machine must not decide the point. At most `max_steps` steps per side.
    """
    steps: dict[str, list[dict]] = {side: [] for side in sides}
    rate = {side: scenario.offered_per_s * start_fraction for side in sides}
    direction = dict.fromkeys(sides, 0)  # +1 going up, -1 going down, 0 before the first step
    done = set()
    for step in range(max_steps):
        for side in sides:
            if side in done:
                continue
            attempts = []
            for attempt in range(SAT_ATTEMPTS):
                row = run_one(side, rate[side], f"{scenario.name}-{side}-sat{step + 1}" + "abcdefgh"[attempt])
                attempts.append(row)
                if row["failure"] is None:
                    break
            verdict = dict(attempts[-1])
            verdict["attempts"] = [r["failure"] for r in attempts]
            steps[side].append(verdict)
            held = verdict["failure"] is None
            direction[side] = direction[side] or (1 if held else -1)
            if held != (direction[side] > 0):  # crossed the point
                done.add(side)
            rate[side] = rate[side] * SAT_STEP_FACTOR if direction[side] > 0 else rate[side] / SAT_STEP_FACTOR
        if len(done) == len(sides):
            break
    return {side: {"steps": v, "point": saturation_point(v)} for side, v in steps.items()}


def _saturation(scenarios: list[Scenario], a: Side, b: Side, args: argparse.Namespace, started: float) -> dict:
    out: dict[str, dict] = {}
    for scenario in scenarios:
        if scenario.publishers == 0:
            continue
        by_name = {a.name: a, b.name: b}

        def run_one(name: str, offered: float, label: str, scenario=scenario) -> dict:
            _say(f"saturation {label}: {offered:,.0f} deliveries/s offered", started)
            result = run_side(by_name[name], scenario, offered, args, label)
            row = row_of(result, scenario.name, name, 0, offered)
            _say(_row_line(row), started)
            return row

        out[scenario.name] = saturation_search(scenario, (a.name, b.name), args.sat_max_steps, run_one,
                                               args.sat_start)
    return out


def _row_line(row: dict) -> str:
    return (f"  -> delivered {_num(row['delivered_per_s'])}/s, server CPU {_num(row['server_cpu_percent'])} %, "
            f"{_num(row['server_cpu_us_per_delivery'])} µs/delivery, p99 {_num(row['latency_p99_ms'])} ms, "
            f"faults {row['faults']}, load avg {row['loadavg_1m_at_end']}"
            + (f"; FAILS: {row['failure']}" if row["failure"] else ""))


def _say(text: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.0f}s] {text}", file=sys.stderr, flush=True)


def markdown(report: dict) -> str:
    a, b = report["a"], report["b"]
    lines = [f"# ringcast bench compare: {a} vs {b}", ""]
    for s in report["scenarios"]:
        lines.append(f"- {s['name']}: {s['connections']:,} connections in {s['rooms']:,} room(s), "
                     f"{s['publishers']:,} publisher(s), {s['offered_per_s']:,.0f} deliveries/s offered; "
                     f"ringcast {s['ringcast_workers']} worker(s), the tutorial's server 1 process; "
                     f"{s['warmup_s']:g} s warm-up, {s['duration_s']:g} s measured.")
    lines.append("")
    if report["rows"]:
        lines.append(markdown_summary(report["summary"], a, b))
        lines += ["| run | delivered/s | server CPU % | µs/delivery | p99 ms | Redis µs/publish | load-gen CPU % | faults "
                  "| load avg |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report["rows"]:
            lines.append(f"| {row['scenario']} {row['side']} r{row['round']} | {_num(row['delivered_per_s'])} "
                         f"| {_num(row['server_cpu_percent'])} | {_num(row['server_cpu_us_per_delivery'])} "
                         f"| {_num(row['latency_p99_ms'])} | {_num(row['redis_cpu_us_per_publish'])} "
                         f"| {_num(row.get('client_cpu_percent'))} | {row['faults']} | {row['loadavg_1m_at_end']} |")
        lines.append("")
    if report.get("saturation"):
        lines += ["## Saturation", "", markdown_saturation(report["saturation"], a, b, report["criterion"]["max_steps"],
                                                             report["criterion"]["start_fraction"])]
    for scenario, profiles in (report.get("profiles") or {}).items():
        lines += [f"## py-spy: {a} in {scenario}", ""]
        for prof in profiles:
            if "error" in prof:
                lines.append(f"- {prof['file']}: {prof['error']}")
                continue
            lines.append(f"- {os.path.basename(prof['file'])}: {prof['samples']:,} samples; own: "
                         + "; ".join(f"{name} {pct}%" for name, pct in prof["own"][:6]))
            lines.append("  inclusive: " + "; ".join(f"{name} {pct}%" for name, pct in prof["inclusive"][:8]))
        lines.append("")
    lines.append(f"Elapsed {report['elapsed_s']:,.0f} s.")
    return "\n".join(lines) + "\n"
