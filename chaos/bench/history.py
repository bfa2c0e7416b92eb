"""Benchmark: publish throughput and latency with room history on and off.

Owns one question: what does keeping history (XADD + EXPIRE in the publish
script) cost? It starts its own redis-server on loopback, drives the real
RedisBus (the code path workers use) with concurrent publishers, alternates
the two modes round by round so both see the same machine noise, and prints
the ratio. Bounded: a fixed number of messages per round.

    python -m chaos.bench.history [--messages 20000] [--publishers 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from chaos.cluster import RedisServer, free_port
from node import envelope
from node.bus_redis import RedisBus, RedisBusSettings
from node.history import HistoryPolicy


def _bus(url: str, policy: HistoryPolicy) -> RedisBus:
    return RedisBus(
        RedisBusSettings(
            url=url, channel_prefix="bench:room:", key_prefix="bench:", timeout_s=5.0,
            reconnect_base_s=0.1, reconnect_cap_s=1.0, room_state_ttl_s=600, policy_for=lambda room: policy,
        )
    )


async def _round(url: str, policy: HistoryPolicy, messages: int, publishers: int, rooms: int) -> tuple[float, list[float]]:
    bus = _bus(url, policy)
    await bus.start()
    body = envelope.pack(envelope.Envelope(int(time.time() * 1000), "bench", "text", "x" * 100))
    latencies: list[float] = []
    per_publisher = messages // publishers

    async def publisher(index: int) -> None:
        room = f"r{index % rooms}"
        for _ in range(per_publisher):
            started = time.perf_counter()
            await bus.publish(room, body)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(publisher(i) for i in range(publishers)))
    elapsed = time.perf_counter() - started
    await bus.close()
    return per_publisher * publishers / elapsed, latencies


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    redis = RedisServer(port=free_port()).start()
    modes = {"off": HistoryPolicy(0, 0), "on": HistoryPolicy(args.history_size, 600)}
    results: dict[str, list[tuple[float, list[float]]]] = {"off": [], "on": []}
    try:
        for round_index in range(args.rounds):
            for name in ("off", "on") if round_index % 2 == 0 else ("on", "off"):
                rate, latencies = await _round(redis.url, modes[name], args.messages, args.publishers, args.rooms)
                results[name].append((rate, latencies))
                print(f"round {round_index + 1} history {name:>3}: {rate:9.0f} publishes/s  "
                      f"p50 {_p(latencies, 0.5) * 1000:6.2f} ms  p99 {_p(latencies, 0.99) * 1000:6.2f} ms", flush=True)
    finally:
        redis.stop()
    summary = {}
    for name, rounds in results.items():
        rates = [r for r, _ in rounds]
        all_latencies = [x for _, lat in rounds for x in lat]
        summary[name] = (statistics.median(rates), _p(all_latencies, 0.5), _p(all_latencies, 0.99))
    print()
    print("| history | publishes/s (median of rounds) | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for name in ("off", "on"):
        rate, p50, p99 = summary[name]
        print(f"| {name} ({'size ' + str(args.history_size) if name == 'on' else 'size 0'}) | {rate:.0f} | {p50 * 1000:.2f} | {p99 * 1000:.2f} |")
    print(f"\nthroughput ratio on/off: {summary['on'][0] / summary['off'][0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.bench.history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per round (default 20000)")
    parser.add_argument("--publishers", type=int, default=50, help="concurrent publishers (default 50)")
    parser.add_argument("--rooms", type=int, default=50, help="rooms published to (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating (default 3)")
    parser.add_argument("--history-size", type=int, default=1000, help="history size in the 'on' mode (default 1000)")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
