"""`ringcast bench`: the load generator's coordinator.

Owns the plan of a run (which connection goes to which worker URL, room,
source address and process; who publishes; which connections are sampled),
starting a local cluster when asked (`--start-cluster`, via chaos/cluster.py,
stopped by PID afterwards), spawning the load processes
(chaos/load/worker.py), the live progress line, sampling the server's
memory and CPU (psutil on worker PIDs, or each worker's `/metrics`), and the
result: loss, duplicates, gaps and reordering computed from what every member received,
the tutorial's columns, JSON and Markdown reports (chaos/load/report.py).
`--server seed` drives the tutorial's Node.js server instead (started with
`--start-cluster` by chaos/bench/seed.py; the load speaks its dialect, see
chaos/load/wire.py), and `ringcast bench compare ...` hands over to
chaos/bench/compare.py (both servers in alternation, ratios). Redis's own CPU
in the measured window comes from `INFO cpu`.
Every run is bounded: the ramp, the publishing time and the settling each
have a deadline. It must not speak WebSocket itself (chaos/load/wire.py does).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import NamedTuple
from multiprocessing.connection import wait as wait_pipes
from urllib.parse import urlparse

from chaos.load.report import markdown, write_reports
from chaos.load.stats import Tally, mean_ms, merge_histograms, percentile_ms
from chaos.load.wire import DIALECTS, RINGCAST, SEED
from chaos.load.worker import SETTLE_MAX_S, ArrivalPlan, ConnectionPlan, ProcessPlan, Target, run

# Flags a benchmark node needs, and why: the defaults protect a production
# worker from one abusive client; here one machine plays thousands of clients.
BENCH_NODE_FLAGS = [
    "--max-connections", "19000",  # a worker holds at most ~19,900 sockets (fd limit 20,000)
    "--max-connections-per-ip", "19000",  # every client comes from a few 127.0.0.x addresses
    "--accept-rate-per-s", "5000", "--accept-burst", "20000",  # the ramp opens thousands of sockets at once
    "--message-rate-per-s", "100000", "--message-burst", "100000",  # saturation runs publish fast from one socket
    "--control-heartbeat-interval-s", "0",  # no control plane in a benchmark cluster
]
CONNECTIONS_PER_PROCESS = 15_000  # under the 20,000 descriptors one process may hold
CONNECTIONS_PER_SOURCE_IP = 20_000  # under the ~28,000 ephemeral ports per (source, destination) pair
IDLE_SETTLE_S = 2.0  # after the ramp, before the "connected" memory sample (and before anyone publishes)
REDIS_INFO_TIMEOUT_S = 5.0  # one `INFO cpu` round trip to the bench's redis-server


@dataclass(frozen=True)
class WorkerUrl:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> "WorkerUrl":
        parts = urlparse(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/ws")

    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"


def redis_cpu_seconds(host: str, port: int) -> float:
    """redis-server's own CPU seconds so far (`INFO cpu`: used_cpu_sys + used_cpu_user)."""
    with socket.create_connection((host, port), timeout=REDIS_INFO_TIMEOUT_S) as sock:
        sock.sendall(b"INFO cpu\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < data.index(b"\r\n") + 2 + int(data[1:data.index(b"\r\n")]):
            chunk = sock.recv(65536)  # a bulk string: $LEN\r\n then LEN bytes
            if not chunk:
                break
            data += chunk
    values = dict(line.split(":", 1) for line in data.decode().splitlines() if ":" in line)
    return float(values["used_cpu_sys"]) + float(values["used_cpu_user"])


class ProcessSample(NamedTuple):
    """One server process at one moment."""

    rss_bytes: float
    cpu_s: float  # user + system
    system_s: float | None  # the kernel's part (system calls and the softirq work they run), None when scraped


class ServerSampler:
    """Resident memory and CPU seconds of each server process: psutil on PIDs if known, else `/metrics`.

    `children`: also every descendant of those PIDs, listed at each sample
    (the tutorial's server forks Node cluster workers). `redis`: (host, port)
    of the redis-server whose CPU `redis_cpu_s` reads, or None.
    """

    def __init__(self, urls: list[WorkerUrl], pids: list[int], children: bool = False,
                 redis: tuple[str, int] | None = None) -> None:
        self.urls = urls
        self.pids = pids
        self.children = children
        self.redis = redis

    def sample(self) -> list[ProcessSample]:
        """One ProcessSample per process."""
        if self.pids:
            import psutil

            out = []
            for pid in self.pids:
                procs = [psutil.Process(pid)]
                if self.children:
                    procs += procs[0].children(recursive=True)
                for proc in procs:
                    try:
                        times = proc.cpu_times()
                        out.append(ProcessSample(float(proc.memory_info().rss), times.user + times.system,
                                                 times.system))
                    except psutil.NoSuchProcess:  # a child gone since the listing
                        continue
            return out
        return [self._scrape(url) for url in self.urls]

    def redis_cpu_s(self) -> float | None:
        if self.redis is None:
            return None
        try:
            return redis_cpu_seconds(*self.redis)
        except (OSError, KeyError, ValueError):
            return None

    @staticmethod
    def _scrape(url: WorkerUrl) -> ProcessSample:
        with urllib.request.urlopen(url.metrics_url(), timeout=5) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith(("process_resident_memory_bytes ", "process_cpu_seconds_total ")):
                name, value = line.split(" ", 1)
                values[name] = float(value)
        return ProcessSample(values.get("process_resident_memory_bytes", 0.0),
                             values.get("process_cpu_seconds_total", 0.0), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringcast bench",
        description="Load generator: N verifying WebSocket members in R rooms, P publishers (fixed population), "
                    "or the tutorial's arrival phases (--phase). Prints a live progress line; writes JSON + Markdown. "
                    "`ringcast bench compare --help`: ringcast and the tutorial's server side by side, with ratios.")
    where = parser.add_argument_group("target")
    where.add_argument("--url", action="append", default=[], help="a worker's ws:// URL, repeatable")
    where.add_argument("--host", default="127.0.0.1", help="node host (with --port/--workers)")
    where.add_argument("--port", type=int, default=8700, help="port of worker 0 (worker i listens on port + i)")
    where.add_argument("--workers", type=int, default=1, help="worker count of the node (or of --start-cluster)")
    where.add_argument("--pid", type=int, action="append", default=[],
                       help="a worker PID for memory/CPU via psutil, repeatable (default: read each worker's /metrics)")
    where.add_argument("--start-cluster", action="store_true",
                       help="start a redis-server and `ringcast node --workers N` with benchmark limits; stop them after")
    where.add_argument("--node-arg", action="append", default=[],
                       help="extra flag for the started node, repeatable (e.g. --node-arg=--history-size=0)")
    where.add_argument("--server", choices=DIALECTS, default=RINGCAST,
                       help="what is measured: ringcast's node, or the tutorial's Node.js server (seed: the same "
                            "join/message frames without seq; deliveries counted by a marker in the text)")
    where.add_argument("--seed-dir", default="",
                       help="the tutorial's server (default ../shared/seed_server next to the repository); with "
                            "--server seed --start-cluster it is started as `start.sh PORT REDIS_PORT WORKERS PIDFILE`")
    where.add_argument("--redis-port", type=int, default=0,
                       help="a redis-server on 127.0.0.1 whose CPU to sample (default: the started one, else none)")
    pop = parser.add_argument_group("fixed population")
    pop.add_argument("--connections", type=int, default=1000, help="members in total (publishers included)")
    pop.add_argument("--rooms", type=int, default=10)
    pop.add_argument("--publishers", type=int, default=10, help="members that also publish to their room")
    pop.add_argument("--rate", type=float, default=10.0, help="messages per second per publisher")
    pop.add_argument("--publish-tick-ms", type=float, default=10.0,
                     help="publishers send what they owe once per tick, in one write: a longer tick sends bursts "
                          "(several messages back to back), which shows what server-side coalescing gains")
    pop.add_argument("--spread", choices=("rooms", "members"), default="rooms",
                     help="rooms: every member of a room on the same worker (room r -> worker r mod W); "
                          "members: members of one room spread over the workers (cross-worker fan-out)")
    arr = parser.add_argument_group("arrival phases (the tutorial's Artillery scenario)")
    arr.add_argument("--phase", action="append", default=[], metavar="DURATION_S:ARRIVALS_PER_S",
                     help="a phase of virtual-user arrivals, repeatable; switches to arrival mode")
    arr.add_argument("--think-min", type=float, default=1.0)
    arr.add_argument("--think-max", type=float, default=5.0)
    arr.add_argument("--messages-per-user", type=int, default=100)
    arr.add_argument("--max-users", type=int, default=10_000, help="most virtual users alive at once (all processes)")
    run_ = parser.add_argument_group("run")
    run_.add_argument("--duration", type=float, default=10.0, help="measured seconds (fixed population)")
    run_.add_argument("--warmup", type=float, default=2.0, help="seconds of publishing before measuring")
    run_.add_argument("--procs", type=int, default=0, help="load processes (default: enough for the fd limit, >= 2)")
    run_.add_argument("--source-ips", type=int, default=0, help="loopback source addresses 127.0.0.1.. (default: by count)")
    run_.add_argument("--sample-every", type=int, default=10,
                      help="decode and verify every frame of 1 connection in this many (publishers always)")
    run_.add_argument("--ramp-timeout", type=float, default=120.0, help="longest the connect ramp may take")
    run_.add_argument("--out", default="", help="directory for bench.json and bench.md (default: no files)")
    run_.add_argument("--label", default="", help="name of the run in the reports")
    return parser


def stop_cleanly_on_signals() -> dict:
    """SIGTERM, and SIGINT even when the shell started us with it ignored (`cmd &`), unwind through the
    `finally` blocks, so every server a run started is stopped by PID instead of being left behind.
    Returns the handlers it replaced (main() puts them back, so a caller such as pytest keeps its own)."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return previous


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = stop_cleanly_on_signals()
    try:
        return _main(argv)
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be put back from here
                signal.signal(signum, handler)


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        from chaos.bench import compare

        return compare.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        result = run_bench(args)
    except RuntimeError as exc:  # SeedUnavailable included: say what is missing, no traceback
        print(f"ringcast bench: {exc}", file=sys.stderr)
        return 2
    result["command"] = "ringcast bench " + " ".join(argv)
    print(markdown(result))
    if args.out:
        paths = write_reports(result, args.out)
        print("reports: " + ", ".join(paths))
    return 0 if result["connect_failures"] == 0 else 1


def run_bench(args: argparse.Namespace, on_window_start=None) -> dict:
    """One run: start what `--start-cluster` asks for, drive the load, stop what was started; the result.

    `on_window_start(pids)`, if given, is called with the server PIDs when the
    measured window opens (chaos/bench/compare.py attaches py-spy there).
    """
    started: list = []  # stopped in reverse order, by PID
    try:
        redis_port = args.redis_port or None
        children = False
        if args.server == SEED:
            from chaos.bench.seed import check_seed_dir

            seed_dir = check_seed_dir(args.seed_dir)  # refuse before starting anything
        if args.start_cluster:
            from chaos.cluster import RedisServer, free_port

            redis = RedisServer(free_port()).start()
            started.append(redis)
            redis_port = redis.port
            if args.server == SEED:
                from chaos.bench.seed import SeedServer

                seed = SeedServer(seed_dir, redis.port, workers=args.workers)
                started.append(seed)
                seed.start()
                urls = [WorkerUrl.parse(seed.url)]
                pids, children, flags = [seed.pid], True, [f"start.sh PORT {redis.port} {args.workers} PIDFILE"]
                print(f"started redis-server on {redis.port} and the tutorial's server on port {seed.port} "
                      f"({args.workers} process(es), {seed_dir})", file=sys.stderr)
            else:
                node = _start_node(redis, args)
                started.append(node)
                urls = [WorkerUrl.parse(node.ws_url(i)) for i in range(args.workers)]
                pids, flags = [node.worker_pid(i) for i in range(args.workers)], BENCH_NODE_FLAGS + args.node_arg
        else:
            default_path = "/ws" if args.server == RINGCAST else "/"
            urls = [WorkerUrl.parse(u) for u in args.url] or [
                WorkerUrl(args.host, args.port + i, default_path) for i in range(args.workers)]
            pids, flags = args.pid, []
            children = args.server == SEED
        sampler = ServerSampler(urls, pids, children=children,
                                redis=("127.0.0.1", redis_port) if redis_port else None)
        coordinator = Coordinator(args, urls, sampler)
        coordinator.on_window_start = on_window_start
        result = coordinator.run()
        result["server"] = args.server
        result["node_flags"] = flags
        return result
    finally:
        for proc in reversed(started):
            proc.stop()


def _start_node(redis, args):
    from chaos.cluster import NodeProcess, free_port_range

    node = NodeProcess(free_port_range(args.workers), args.workers,
                       ["--redis", redis.url, *BENCH_NODE_FLAGS, *args.node_arg])
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    print(f"started redis-server on {redis.port} and ringcast node on ports {node.ports} "
          f"with {' '.join(BENCH_NODE_FLAGS + args.node_arg)}", file=sys.stderr)
    return node


class Coordinator:
    def __init__(self, args: argparse.Namespace, urls: list[WorkerUrl], sampler: ServerSampler) -> None:
        self.args = args
        self.urls = urls
        self.sampler = sampler
        self.arrival = bool(args.phase)
        population = args.max_users if self.arrival else args.connections
        self.procs = args.procs or max(2, math.ceil(population / CONNECTIONS_PER_PROCESS))
        self.source_ips = [f"127.0.0.{i + 1}" for i in
                           range(args.source_ips or max(1, math.ceil(population / CONNECTIONS_PER_SOURCE_IP)))]
        self.progress: dict[int, tuple] = {}
        self.interval_latency: dict[int, int] = {}
        self.last_progress: tuple[float | None, int] = (None, 0)
        self.peak_connected = 0  # most members joined at once (arrival mode has no fixed population)
        self.dialect = getattr(args, "server", RINGCAST)
        self.on_window_start = None  # called with the server PIDs when the measured window opens

    # --- plan --------------------------------------------------------------
    def plans(self) -> list[ProcessPlan]:
        args = self.args
        ramp = dict(ramp_timeout_s=args.ramp_timeout)
        if self.arrival:
            phases = []
            for spec in args.phase:
                duration, rate = spec.split(":")
                phases.append((float(duration), float(rate) / self.procs))
            targets = [Target(u.host, u.port, u.path, f"bench-{r}")
                       for r in range(args.rooms) for u in [self.urls[r % len(self.urls)]]]
            arrival = ArrivalPlan(phases, targets, self.source_ips, 1.0, args.think_min, args.think_max,
                                  args.messages_per_user, max(1, args.max_users // self.procs), args.sample_every)
            return [ProcessPlan(i, arrival=arrival, dialect=self.dialect, **ramp) for i in range(self.procs)]
        per_process: list[list[ConnectionPlan]] = [[] for _ in range(self.procs)]
        workers = len(self.urls)
        for i in range(args.connections):
            room_index = i % args.rooms
            member_of_room = i // args.rooms
            worker = room_index % workers if args.spread == "rooms" else (room_index + member_of_room) % workers
            url = self.urls[worker]
            publishes = i < args.publishers
            per_process[i % self.procs].append(ConnectionPlan(
                url.host, url.port, url.path, f"bench-{room_index}", self.source_ips[i % len(self.source_ips)],
                sampled=publishes or i % args.sample_every == 0, publishes=publishes, number=i))
        return [ProcessPlan(i, connections=c, publish_rate_per_s=args.rate,
                            publish_tick_s=args.publish_tick_ms / 1000, dialect=self.dialect, **ramp)
                for i, c in enumerate(per_process)]

    # --- run ---------------------------------------------------------------
    def run(self) -> dict:
        ctx = multiprocessing.get_context("spawn")
        rss_before = self.sampler.sample()
        pipes, processes = [], []
        for plan in self.plans():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=run, args=(plan, child), daemon=True)
            proc.start()
            child.close()
            pipes.append(parent)
            processes.append(proc)
        try:
            return self._drive(pipes, processes, rss_before)
        finally:
            for proc in processes:
                proc.join(timeout=10)
                if proc.is_alive():  # only our own children, by their handles
                    proc.kill()
                    proc.join(timeout=5)

    def _drive(self, pipes, processes, rss_before) -> dict:
        args = self.args
        ramp_started = time.monotonic()
        ready = self._collect(pipes, "ready", args.ramp_timeout + 60)
        ramp_s = time.monotonic() - ramp_started
        connected = sum(r[2] for r in ready.values())
        failures = sum(r[3] for r in ready.values())
        self._line(f"ramp done: {connected} connected, {failures} failed in {ramp_s:.1f}s", final=True)
        time.sleep(IDLE_SETTLE_S)
        rss_connected = self.sampler.sample()
        if self.arrival:
            total_s = sum(float(p.split(":")[0]) for p in args.phase)
            run_s = total_s + args.think_max * 2 + 2  # last arrivals finish at most a couple of thinks later
            measure_s = total_s - args.warmup
        else:
            run_s = args.warmup + args.duration
            measure_s = args.duration
        now = time.monotonic_ns()
        window_start = now + int(args.warmup * 1e9)
        window_end = window_start + int(measure_s * 1e9)
        for pipe in pipes:
            pipe.send(("go", window_start, window_end, now + int(run_s * 1e9)))
        cpu_start = cpu_end = None
        client_cpu_start = client_cpu_end = None
        redis_cpu = [None, None]
        load_average = os.getloadavg()
        results: dict[int, tuple] = {}
        positions: dict[int, dict[str, int]] = {}  # fixed population: each process's rooms, once its own are back
        dead: set[int] = set()
        expecting = False
        deadline = time.monotonic() + run_s + 2 * SETTLE_MAX_S + 30  # publishing, then the settle's two waits
        while len(results) + len(dead) < len(pipes) and time.monotonic() < deadline:
            self._pump(pipes, results, positions, dead, 0.5)
            if not expecting and not self.arrival and set(range(len(pipes))) <= {*positions, *results, *dead}:
                expecting = True
                self._send_final_positions(pipes, positions, {*results, *dead})
            now = time.monotonic_ns()
            if cpu_start is None and now >= window_start:
                cpu_start, client_cpu_start = self.sampler.sample(), _client_cpu(processes)
                redis_cpu[0] = self.sampler.redis_cpu_s()
                if self.on_window_start is not None:
                    self.on_window_start(self.sampler.pids)
            if cpu_end is None and now >= window_end:
                cpu_end, client_cpu_end = self.sampler.sample(), _client_cpu(processes)
                redis_cpu[1] = self.sampler.redis_cpu_s()
                load_average = os.getloadavg()
        rss_end = self.sampler.sample()
        self._line("", final=True)
        result = self._result(results, ready, ramp_s, measure_s, rss_before, rss_connected, rss_end,
                              cpu_start, cpu_end, client_cpu_start, client_cpu_end, positions)
        redis_cpu_s = redis_cpu[1] - redis_cpu[0] if None not in redis_cpu else None
        result["redis_cpu_percent"] = round(100 * redis_cpu_s / measure_s, 1) if redis_cpu_s is not None else None
        result["redis_cpu_us_per_publish"] = (round(1e6 * redis_cpu_s / result["published_in_window"], 2)
                                              if redis_cpu_s is not None and result["published_in_window"] else None)
        result["loadavg_1m_at_end"] = round(load_average[0], 2)
        return result

    def _collect(self, pipes, kind: str, timeout_s: float) -> dict[int, tuple]:
        got: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < len(pipes) and time.monotonic() < deadline:
            for pipe in wait_pipes(pipes, timeout=0.5):
                try:
                    message = pipe.recv()
                except EOFError:
                    raise RuntimeError("a load process died during the ramp") from None
                if message[0] == kind:
                    got[message[1]] = message
                elif message[0] == "progress":
                    self._on_progress(message)
        return got

    def _pump(self, pipes, results: dict[int, tuple], positions: dict[int, dict[str, int]], dead: set[int],
              timeout_s: float) -> None:
        waiting = {id(p): i for i, p in enumerate(pipes) if i not in results and i not in dead}
        for pipe in wait_pipes([pipes[i] for i in waiting.values()], timeout=timeout_s):
            try:
                message = pipe.recv()
            except EOFError:  # the process died without its result
                dead.add(waiting[id(pipe)])
                continue
            if message[0] == "result":
                results[message[1]] = message
            elif message[0] == "positions":
                positions[message[1]] = message[2]
            elif message[0] == "progress":
                self._on_progress(message)

    def final_positions(self, positions: dict[int, dict[str, int]]) -> dict[str, int]:
        """Each room's final position: ringcast, the highest seq any process saw once its own publishes were
        back; the tutorial's server (no seq), the sum of what every process's publishers sent to the room."""
        final: dict[str, int] = {}
        for rooms in positions.values():
            for room, value in rooms.items():
                final[room] = final.get(room, 0) + value if self.dialect == SEED else max(final.get(room, 0), value)
        return final

    def _send_final_positions(self, pipes, positions: dict[int, dict[str, int]], done: set[int]) -> None:
        """Each room's final position (`final_positions`), to every process still settling."""
        final = self.final_positions(positions)
        for index, pipe in enumerate(pipes):
            if index not in done:
                try:
                    pipe.send(("expect", final))
                except OSError:  # it died meanwhile: its result is missing, which the report shows
                    pass

    def _on_progress(self, message: tuple) -> None:
        _, index, connected, frames, published, latency_delta = message
        self.progress[index] = (connected, frames, published)
        self.peak_connected = max(self.peak_connected, sum(p[0] for p in self.progress.values()))
        merge_histograms(self.interval_latency, latency_delta)
        if index != 0:
            return
        # every process reports once a second; print the whole picture when process 0 does
        now = time.monotonic()
        total_frames = sum(p[1] for p in self.progress.values())
        last_time, last_frames = self.last_progress
        self.last_progress = (now, total_frames)
        if last_time is None:
            return
        rate = (total_frames - last_frames) / (now - last_time)
        p99 = percentile_ms(self.interval_latency, 0.99)
        self.interval_latency = {}
        self._line(f"connections {sum(p[0] for p in self.progress.values()):>6}  delivered/s ~{rate:>9,.0f}  "
                   f"p99 {'-' if p99 is None else f'{p99:.1f} ms'}")

    @staticmethod
    def _line(text: str, final: bool = False) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K" + text + ("\n" if final else ""))
        elif text:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    # --- result ------------------------------------------------------------
    def _result(self, results, ready, ramp_s, measure_s, rss_before, rss_connected, rss_end,
                cpu_start, cpu_end, client_cpu_start, client_cpu_end, positions=None) -> dict:
        args = self.args
        tally = Tally()
        members = []
        for message in results.values():
            tally.merge(Tally.from_dict(message[2]))
            members.extend(message[3])
        # the room's last position is the highest seq any sampled member (publishers included) saw
        join_seq: dict[str, int] = {}
        final_seq: dict[str, int] = {}
        for room, joined, _, sampled, last in members:
            join_seq[room] = min(join_seq.get(room, joined), joined)
            if sampled and self.dialect == RINGCAST:
                final_seq[room] = max(final_seq.get(room, joined), last, joined)
        if self.dialect == SEED:  # no seq: members must get everything published to their room (all joined at 0)
            final_seq = self.final_positions(positions or {})
        expected = lost = surplus = 0
        short_examples = []
        for room, joined, received, sampled, last in members:
            want = final_seq.get(room, join_seq[room]) - joined if not self.arrival else received
            expected += want
            lost += max(0, want - received)
            surplus += max(0, received - want)
            if want != received and len(short_examples) < 10:
                short_examples.append({"room": room, "join_seq": joined, "received": received, "expected": want,
                                       "last_seq_seen": last if sampled else None})
        sequenced = sum(final_seq.get(r, s) - s for r, s in join_seq.items())
        window = tally.latency_window
        delivered_per_s = tally.frames_in_window / measure_s if measure_s > 0 else 0.0
        server_cpu_s = (sum(s.cpu_s for s in cpu_end) - sum(s.cpu_s for s in cpu_start)) if cpu_start and cpu_end else None
        server_system_s = (sum(s.system_s for s in cpu_end) - sum(s.system_s for s in cpu_start)
                           if cpu_start and cpu_end and all(s.system_s is not None for s in cpu_start + cpu_end)
                           else None)
        client_cpu_s = (client_cpu_end - client_cpu_start) if client_cpu_start is not None and client_cpu_end is not None else None
        connected_total = sum(r[2] for r in ready.values()) if not self.arrival else self.peak_connected
        rss_delta = sum(s.rss_bytes for s in (rss_end if self.arrival else rss_connected)) - sum(s.rss_bytes for s in rss_before)
        return {
            "label": args.label,
            "mode": "arrival" if self.arrival else "fixed",
            "workers": len(self.urls),
            "load_processes": self.procs,
            "source_ips": len(self.source_ips),
            "sample_every": args.sample_every,
            "connections_planned": args.max_users if self.arrival else args.connections,
            "connections": connected_total,
            "connect_failures": tally.connect_failures,
            "ramp_s": round(ramp_s, 2),
            "rooms": args.rooms,
            "publishers": 0 if self.arrival else args.publishers,
            "rate_per_publisher_s": None if self.arrival else args.rate,
            "publish_tick_ms": args.publish_tick_ms,
            "phases": args.phase,
            "warmup_s": args.warmup,
            "measured_s": measure_s,
            "published": tally.published,
            "published_per_s": round(tally.published_in_window / measure_s, 1) if measure_s > 0 else None,
            "published_in_window": tally.published_in_window,
            "delivered_in_window": tally.frames_in_window,
            "delivered": tally.frames_total,
            "delivered_per_s": round(delivered_per_s, 1),
            "latency_samples": sum(window.values()),
            "latency_avg_ms": _round(mean_ms(window)),
            "latency_p50_ms": _round(percentile_ms(window, 0.50)),
            "latency_p99_ms": _round(percentile_ms(window, 0.99)),
            "latency_max_ms": _round(percentile_ms(window, 1.0)),
            "expected_deliveries": None if self.arrival else expected,  # users come and go: only gaps/duplicates count
            "lost": lost,
            "surplus": surplus,
            "miscounted_members": short_examples,
            "unsequenced_publishes": None if self.arrival or self.dialect == SEED else tally.published - sequenced,
            "duplicates": tally.duplicates,
            "gaps": tally.gaps,
            "reordered": tally.reordered,
            "gap_messages": tally.gap_messages,
            "sampled_frames": tally.sampled_frames,
            "errors": tally.errors,
            "error_examples": tally.error_examples,
            "closed_by_server": tally.closed_by_server,
            "server_rss_before_mib": [round(s.rss_bytes / 2**20, 1) for s in rss_before],
            "server_rss_connected_mib": [round(s.rss_bytes / 2**20, 1) for s in rss_connected],
            "server_rss_end_mib": [round(s.rss_bytes / 2**20, 1) for s in rss_end],
            "server_rss_per_connection_kib": round(rss_delta / connected_total / 1024, 2) if connected_total else None,
            "server_cpu_percent": round(100 * server_cpu_s / measure_s, 1) if server_cpu_s is not None else None,
            "server_cpu_us_per_delivery": (round(1e6 * server_cpu_s / tally.frames_in_window, 2)
                                           if server_cpu_s and tally.frames_in_window else None),
            "server_deliveries_per_cpu_s": (round(tally.frames_in_window / server_cpu_s)
                                            if server_cpu_s and tally.frames_in_window else None),
            # the kernel's part of the server's CPU per delivery (write/read system calls, TCP, loopback softirq)
            "server_system_us_per_delivery": (round(1e6 * server_system_s / tally.frames_in_window, 2)
                                              if server_system_s is not None and tally.frames_in_window else None),
            "server_user_us_per_delivery": (round(1e6 * (server_cpu_s - server_system_s) / tally.frames_in_window, 2)
                                            if server_system_s is not None and tally.frames_in_window else None),
            "client_cpu_percent": round(100 * client_cpu_s / measure_s, 1) if client_cpu_s is not None else None,
        }


def _client_cpu(processes) -> float | None:
    import psutil

    total = 0.0
    for proc in processes:
        try:
            times = psutil.Process(proc.pid).cpu_times()
        except psutil.Error:
            return None
        total += times.user + times.system
    return total


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    sys.exit(main())
