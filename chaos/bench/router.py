"""Benchmark: how fast placement answers, in process and over HTTP.

Owns two questions: what does one `Ring.route()` call cost (microseconds per
call, for a few ring sizes), and how many `GET /route` lookups per second one
`ringcast router` process answers on loopback (keep-alive connections,
concurrent requests, latency percentiles). It starts its own router (static
--nodes, no Redis needed) and stops it by PID. Bounded: a fixed number of
lookups and a time cap.

    python -m chaos.bench.router [--calls 200000] [--requests 20000] [--concurrency 32] [--max-seconds 30]

The HTTP load generator runs on the same machine as the router: on a small
machine it competes with the router for CPU, so the figure is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import psutil

from chaos.cluster import RouterProcess, free_port
from router.ring import Member, Ring


def ring_of(size: int) -> Ring:
    return Ring([Member(f"10.0.{i // 250}.{i % 250}:8700", f"ws://10.0.{i // 250}.{i % 250}:8700/ws") for i in range(size)], 1)


def bench_route_calls(calls: int) -> None:
    rooms = [f"room-{i}" for i in range(calls)]
    for size in (4, 16, 64):
        ring = ring_of(size)
        route = ring.route
        started = time.perf_counter()
        for room in rooms:
            route(room)
        elapsed = time.perf_counter() - started
        print(f"route() {size:>3} members: {elapsed / calls * 1e6:.2f} us/call ({calls / elapsed:,.0f} calls/s, {calls:,} distinct rooms)")


async def bench_http(url: str, requests: int, concurrency: int, max_seconds: float, router_pid: int) -> None:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0
    deadline = time.perf_counter() + max_seconds

    async def one_client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < requests and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            async with session.get(f"{url}/route", params={"room": f"room-{index}"}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{url}/route", params={"room": "warmup"}) as response:
            await response.read()
        router_cpu = psutil.Process(router_pid)
        cpu_before = sum(router_cpu.cpu_times()[:2])
        started = time.perf_counter()
        await asyncio.gather(*(one_client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu_used_s = sum(router_cpu.cpu_times()[:2]) - cpu_before
    done = len(latencies)
    latencies.sort()
    p50 = latencies[done // 2] * 1000
    p99 = latencies[min(done - 1, int(done * 0.99))] * 1000
    print(f"GET /route: {done:,} lookups in {elapsed:.2f}s = {done / elapsed:,.0f} lookups/s "
          f"(concurrency {concurrency}, keep-alive), latency p50 {p50:.2f} ms p99 {p99:.2f} ms, "
          f"mean {statistics.fmean(latencies) * 1000:.2f} ms, statuses {statuses}")
    # The load generator shares the machine: the router's own CPU time says what one core could answer.
    print(f"router CPU: {cpu_used_s:.2f}s for {done:,} lookups = {done / cpu_used_s:,.0f} lookups per router CPU-second "
          f"({cpu_used_s / done * 1e6:.0f} us of router CPU per lookup)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.bench.router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="route() calls per ring size")
    parser.add_argument("--requests", type=int, default=20_000, help="HTTP lookups in total")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    parser.add_argument("--members", type=int, default=16, help="members of the router's static ring")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on the HTTP phase")
    args = parser.parse_args(argv)
    bench_route_calls(args.calls)
    nodes = ",".join(f"127.0.0.1:{9000 + i}" for i in range(args.members))
    router = RouterProcess(port=free_port(), args=["--nodes", nodes, "--log-level", "warning"]).start()
    try:
        assert router.proc is not None
        asyncio.run(bench_http(router.url(), args.requests, args.concurrency, args.max_seconds, router.proc.pid))
    finally:
        router.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
