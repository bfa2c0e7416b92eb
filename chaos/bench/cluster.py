"""Benchmark: the Redis Cluster bus with 1 vs 3 shards: publishes per second, Redis CPU per message.

Owns one question: what does sharding the bus over Redis Cluster masters
buy? For each shard count it starts a local Redis Cluster
(chaos/redis_topologies.py; 1 master owning every slot, or 3 masters),
drives the real RedisClusterBus (the code path `--bus redis-cluster`
workers use) with concurrent publishers over rooms spread across the slots,
one more bus subscribed to every room (so every SPUBLISH is delivered), and
reads every master's `INFO cpu` before and after. It prints publishes per
second, Redis CPU per published message (all masters together), the
busiest master's share, and the benchmark process's own CPU per message
(the client side, usually the limit on this 2-core machine). Bounded: a
fixed number of messages per run and a time limit.

    python -m chaos.bench.cluster [--messages 20000] [--publishers 64] [--rooms 256] [--shards 1 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from chaos.redis_topologies import RedisClusterGroup
from node import envelope
from node.bus_cluster import RedisClusterBus
from node.bus_redis import RedisBusSettings
from node.history import HistoryPolicy

MAX_RUN_S = 120.0  # a run that takes longer is abandoned


def _bus(url: str) -> RedisClusterBus:
    return RedisClusterBus(
        RedisBusSettings(
            url=url, channel_prefix="bench:room:", key_prefix="bench:", timeout_s=5.0, reconnect_base_s=0.1,
            reconnect_cap_s=1.0, room_state_ttl_s=600, policy_for=lambda room: HistoryPolicy(100, 600),
            max_connections=64,
        )
    )


def _redis_cpu_s(group: RedisClusterGroup) -> list[float]:
    """used_cpu_sys + used_cpu_user of every master, in order."""
    totals = []
    for node in group.nodes[:group.masters]:
        info = dict(line.split(":", 1) for line in node.command("INFO", "cpu").decode().split() if ":" in line)
        totals.append(float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))
    return totals


async def _run(group: RedisClusterGroup, messages: int, publishers: int, rooms: int) -> dict[str, float]:
    received = 0

    def count(message) -> None:
        nonlocal received
        received += 1

    listener = _bus(group.url)
    listener.set_handlers(count)
    await listener.start()
    names = [f"r{i}" for i in range(rooms)]
    for name in names:
        await listener.subscribe(name)
    bus = _bus(group.url)
    await bus.start()
    body = envelope.pack(envelope.Envelope(int(time.time() * 1000), "bench", "text", "x" * 100))
    per_publisher = messages // publishers
    total = per_publisher * publishers
    for name in names:  # every room's state exists before the measure
        await bus.publish(name, body)
    before_cpu = _redis_cpu_s(group)
    before_own = time.process_time()
    start_received = received

    async def publisher(index: int) -> None:
        for k in range(per_publisher):
            await bus.publish(names[(index + k * publishers) % rooms], body)

    started = time.perf_counter()
    async with asyncio.timeout(MAX_RUN_S):
        await asyncio.gather(*(publisher(i) for i in range(publishers)))
        while received - start_received < total:
            await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    own = time.process_time() - before_own
    cpu = [after - prior for after, prior in zip(_redis_cpu_s(group), before_cpu)]
    await bus.close()
    await listener.close()
    return {
        "publishes_per_s": total / elapsed,
        "redis_us_per_msg": sum(cpu) / total * 1e6,
        "busiest_share": max(cpu) / sum(cpu) if sum(cpu) else 0.0,
        "client_us_per_msg": own / total * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--publishers", type=int, default=64)
    parser.add_argument("--rooms", type=int, default=256)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    results: dict[int, list[dict[str, float]]] = {shards: [] for shards in args.shards}
    groups = {}
    try:
        for shards in args.shards:
            groups[shards] = RedisClusterGroup(masters=shards).start()
        for round_ in range(args.rounds):  # alternate, so every shard count sees the same machine noise
            for shards in args.shards:
                result = asyncio.run(_run(groups[shards], args.messages, args.publishers, args.rooms))
                results[shards].append(result)
                print(f"round {round_ + 1} shards {shards}: {result['publishes_per_s']:,.0f} publishes/s, "
                      f"Redis {result['redis_us_per_msg']:.1f} us/msg (busiest master {result['busiest_share']:.0%}), "
                      f"client {result['client_us_per_msg']:.1f} us/msg", flush=True)
    finally:
        for group in groups.values():
            group.stop()
    for shards, runs in results.items():
        print(f"shards {shards} median of {len(runs)}: "
              f"{statistics.median(r['publishes_per_s'] for r in runs):,.0f} publishes/s, "
              f"Redis {statistics.median(r['redis_us_per_msg'] for r in runs):.1f} us/msg all masters, "
              f"busiest master {statistics.median(r['busiest_share'] for r in runs):.0%} of it, "
              f"client {statistics.median(r['client_us_per_msg'] for r in runs):.1f} us/msg")


if __name__ == "__main__":
    main()
