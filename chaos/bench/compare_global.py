"""Ring placement (per-room channels) vs the tutorial's global broadcast, side by side.

Owns one comparison: for each worker count it starts a fresh redis-server and
`ringcast node` (the benchmark flags of chaos/bench/cli.py plus `--bus redis` or
`--bus global`; with `--designs ... redis-cluster` also a fresh 3-master Redis
Cluster and `--bus redis-cluster`, whose rooms are shard-routed), drives the same fixed load through chaos/bench/cli.py's
Coordinator, then reads every worker's `/metrics` for the bus messages it
received and the messages the node published (and redis-server's CPU over
the whole run, via psutil), and prints one table
(docs/benchmarks.md, "Ring placement vs global broadcast"). The two designs
alternate per worker count so machine noise hits both alike. Every process it
starts is stopped by PID. It must not generate load itself (chaos/bench/cli.py
does) nor judge the numbers.

    .venv/bin/python -m chaos.bench.compare_global --workers 1 2 4 --connections 2000 --rooms 400 \\
        --publishers 400 --rate 5 --duration 8 --warmup 2 [--designs redis global redis-cluster]
"""

from __future__ import annotations

import argparse
import json
import os

from chaos.bench.cli import BENCH_NODE_FLAGS, Coordinator, ServerSampler, WorkerUrl
from chaos.bench.cli import build_parser as bench_parser
from chaos.cluster import NodeProcess, RedisServer, free_port, free_port_range
from chaos.redis_topologies import RedisClusterGroup

DESIGNS = ("redis", "global", "redis-cluster")  # per-room channels, the baseline, per-room sharded channels
DEFAULT_DESIGNS = ("redis", "global")
DESIGN_NAMES = {
    "redis": "ring placement (--bus redis)",
    "global": "global broadcast (--bus global)",
    "redis-cluster": "ring placement on 3 shards (--bus redis-cluster)",
}
CLUSTER_MASTERS = 3


def run_one(design: str, workers: int, load: list[str]) -> dict:
    if design == "redis-cluster":
        redis = RedisClusterGroup(masters=CLUSTER_MASTERS).start()
        redis_pids = [server.proc.pid for server in redis.nodes]
    else:
        redis = RedisServer(free_port()).start()
        redis_pids = [redis.proc.pid]
    node = NodeProcess(free_port_range(workers), workers, ["--redis", redis.url, "--bus", design, *BENCH_NODE_FLAGS])
    try:
        node.start()
        urls = [WorkerUrl.parse(node.ws_url(i)) for i in range(workers)]
        pids = [node.worker_pid(i) for i in range(workers)]
        load_before = os.getloadavg()[0]
        args = bench_parser().parse_args(["--workers", str(workers), "--spread", "rooms", *load])
        redis_cpu_before = sum(_cpu_seconds(pid) for pid in redis_pids)
        result = Coordinator(args, urls, ServerSampler(urls, pids)).run()
        redis_cpu_s = sum(_cpu_seconds(pid) for pid in redis_pids) - redis_cpu_before  # the whole run: ramp, warmup, measure, settle
        bus_received = [int(node.metric(i, "ringcast_bus_messages_received_total")) for i in range(workers)]
        published = int(sum(node.metric(i, "ringcast_messages_published_total") for i in range(workers)))
    finally:
        node.stop()
        redis.stop()
    return {
        "design": design, "workers": workers, "loadavg_1m_before": round(load_before, 2),
        "delivered_per_s": result["delivered_per_s"], "published_per_s": result["published_per_s"],
        "server_cpu_percent": result["server_cpu_percent"],
        "server_cpu_us_per_delivery": result["server_cpu_us_per_delivery"],
        "latency_p99_ms": result["latency_p99_ms"], "lost": result["lost"], "duplicates": result["duplicates"],
        "gaps": result["gaps"], "connect_failures": result["connect_failures"],
        "published_total": published, "bus_received_per_worker": bus_received,
        "bus_received_over_published": [round(n / published, 2) if published else None for n in bus_received],
        "redis_cpu_s": round(redis_cpu_s, 2),
        "redis_cpu_us_per_published": round(1e6 * redis_cpu_s / published, 1) if published else None,
    }


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def table(rows: list[dict]) -> str:
    lines = [
        "| design | workers | delivered/s | server CPU % | server CPU µs / delivery | p99 ms | bus msgs received per worker "
        "| received / published, per worker | Redis CPU µs / published | lost / dup / gaps | load avg before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = DESIGN_NAMES[row["design"]]
        lines.append(
            f"| {name} | {row['workers']} | {row['delivered_per_s']:,.0f} | {row['server_cpu_percent']} "
            f"| {row['server_cpu_us_per_delivery']} | {row['latency_p99_ms']} "
            f"| {' / '.join(f'{n:,}' for n in row['bus_received_per_worker'])} "
            f"| {' / '.join(str(r) for r in row['bus_received_over_published'])} | {row['redis_cpu_us_per_published']} "
            f"| {row['lost']} / {row['duplicates']} / {row['gaps']} | {row['loadavg_1m_before']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.bench.compare_global", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=400)
    parser.add_argument("--publishers", type=int, default=400)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DEFAULT_DESIGNS),
                        help="buses to compare, in this order per worker count (redis-cluster: a fresh 3-master cluster)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    load = ["--connections", str(args.connections), "--rooms", str(args.rooms), "--publishers", str(args.publishers),
            "--rate", str(args.rate), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    rows = []
    for workers in args.workers:
        for design in args.designs:
            print(f"--- {design}, {workers} worker(s): ringcast bench {' '.join(load)} --spread rooms", flush=True)
            rows.append(run_one(design, workers, load))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
