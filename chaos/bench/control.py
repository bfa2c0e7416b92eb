"""Control plane numbers: failure detection, client recovery after a crash, drain duration.

Owns one bounded benchmark run on loopback: a redis-server, a node with two
workers, a route service and a control replica (all real processes, stopped
by PID at the end), plus a fleet of lightweight clients. It prints:

- detection: time from SIGKILL of a worker to the new ring epoch in Redis;
- recovery: time from that SIGKILL until every client of the dead worker is
  joined again on the survivor (through the route service);
- drain: time from POST /v1/nodes/{id}/drain until the worker reports
  `drained`, and until every one of its clients is joined elsewhere, for N
  clients at the configured window and rate cap.

Run: `.venv/bin/python -m chaos.bench.control [--clients 300] [--rounds 3] [--drain-clients 800]`.
Results are recorded in docs/benchmarks.md ("Control plane").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import time
import urllib.request

import redis

from chaos.cluster import ControlProcess, NodeProcess, RedisServer, RouterProcess, free_port, free_port_range
from chaos.eventually import eventually
from chaos.fleet import Fleet
from router.ring import Ring

MAX_CLIENTS = 2000  # the fleet runs in this one process: keep it bounded
TOKEN = "bench-token"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos.bench.control", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=300, help="clients spread over rooms for the crash rounds")
    parser.add_argument("--rounds", type=int, default=3, help="SIGKILL rounds (the worker is restarted between them)")
    parser.add_argument("--drain-clients", type=int, default=800, help="clients on the drained worker")
    parser.add_argument("--drain-window-s", type=float, default=2.0, help="drain window")
    parser.add_argument("--steer-rate", type=float, default=200.0, help="workers' --steer-max-rate-per-s")
    parser.add_argument("--dead-after-s", type=float, default=3.0, help="control --dead-after-s")
    args = parser.parse_args(argv)
    if not (0 < args.clients <= MAX_CLIENTS and 0 < args.drain_clients <= MAX_CLIENTS and 0 < args.rounds <= 10):
        parser.error(f"clients 1..{MAX_CLIENTS}, rounds 1..10")
    return args


def ring_in(client: redis.Redis) -> Ring:
    raw = client.get("ringcast:ring")
    return Ring.from_json(raw) if raw else Ring()


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}s  min {min(values):.2f}s  max {max(values):.2f}s  (n={len(values)})"


async def crash_round(node: NodeProcess, control: ControlProcess, router: RouterProcess, rdb: redis.Redis,
                      clients: int) -> tuple[float, float, int]:
    def full_ring() -> Ring | None:
        ring = ring_in(rdb)
        return ring if len(ring) == 2 else None

    before = await eventually(full_ring, what="both workers in the ring", timeout_s=60)
    victim = f"127.0.0.1:{node.port + 1}"
    rooms = [f"bench-{i % max(1, clients // 5)}" for i in range(clients)]

    async def resolve(room: str) -> str:
        def ask() -> str:
            with urllib.request.urlopen(router.url(f"/route?room={room}"), timeout=2) as response:
                return json.loads(response.read())["url"]
        return await asyncio.to_thread(ask)

    fleet = Fleet(rooms, lambda room: before.route(room).url, resolve)
    await fleet.start(connect_concurrency=8)
    try:
        await eventually(fleet.all_joined, what="clients joined", timeout_s=60)
        victims = [c for c in fleet.clients if c.worker == victim]
        killed_at = time.monotonic()
        os.kill(node.worker_pid(1), signal.SIGKILL)
        await eventually(lambda: victim not in ring_in(rdb), what="the killed worker out of the ring", timeout_s=60,
                         interval_s=0.01)
        detected_at = time.monotonic()
        await eventually(lambda: all(c.joined and c.worker != victim for c in victims), what="victims back",
                         timeout_s=60)
        recovered_at = max(c.joined_at for c in victims)
        return detected_at - killed_at, recovered_at - killed_at, len(victims)
    finally:
        await fleet.stop()


async def drain_round(node: NodeProcess, control: ControlProcess, rdb: redis.Redis, clients: int,
                      window_s: float) -> tuple[float, float]:
    await eventually(lambda: len(ring_in(rdb)) == 2, what="both workers in the ring", timeout_s=60)
    drained = f"127.0.0.1:{node.port}"
    rooms = [f"drain-{i % 50}" for i in range(clients)]

    async def no_route(room: str) -> str:
        raise RuntimeError("drain notices carry a url")

    fleet = Fleet(rooms, lambda room: node.ws_url(0), no_route)
    await fleet.start(connect_concurrency=8)
    try:
        await eventually(fleet.all_joined, what="drain clients joined", timeout_s=120)
        started = time.monotonic()
        status, answer = control.call("POST", f"/v1/nodes/{drained}/drain", {"windowS": window_s})
        assert status == 202, answer

        def state() -> str | None:
            nodes = {n["id"]: n for n in control.get("/v1/nodes")[1]["nodes"]}
            return nodes[drained]["state"]
        await eventually(state, what="the worker drained", equals="drained", timeout_s=120)
        drained_at = time.monotonic()
        await eventually(lambda: fleet.all_joined() and all(c.worker != drained for c in fleet.clients),
                         what="drained clients elsewhere", timeout_s=120)
        rejoined_at = max(c.joined_at for c in fleet.clients)
        errors = sum(len(c.errors) + c.unexpected_closes for c in fleet.clients)
        assert errors == 0, f"{errors} client errors during the drain"
        control.call("POST", f"/v1/nodes/{drained}/undrain")
        return drained_at - started, rejoined_at - started
    finally:
        await fleet.stop()


async def run(args: argparse.Namespace) -> None:
    server = RedisServer(port=free_port()).start()
    node = control = router = None
    try:
        node = NodeProcess(port=free_port_range(2), workers=2, args=[
            # Restarted only after the control plane had time to notice (backoff > dead_after_s), every time.
            "--redis", server.url, "--restart-backoff-base-s", str(args.dead_after_s + 3), "--restart-reset-after-s", "1",
            "--steer-max-rate-per-s", str(args.steer_rate),
        ]).start()
        control = ControlProcess(port=free_port(), redis_url=server.url, admin_token=TOKEN,
                                 args=["--dead-after-s", str(args.dead_after_s), "--rejoin-hold-down-s", "1"]).start()
        router = RouterProcess(port=free_port(), args=["--redis", server.url]).start()
        rdb = redis.Redis.from_url(server.url)
        detection, recovery = [], []
        for round_index in range(args.rounds):
            detect_s, recover_s, victims = await crash_round(node, control, router, rdb, args.clients)
            detection.append(detect_s)
            recovery.append(recover_s)
            print(f"round {round_index + 1}: detection {detect_s:.2f}s, {victims} clients of the dead worker "
                  f"all joined again after {recover_s:.2f}s", flush=True)
            node.wait_ready(1, 60)  # the supervisor restarts it; it rejoins after the hold-down
        drain_s, moved_s = await drain_round(node, control, rdb, args.drain_clients, args.drain_window_s)
        print()
        print(f"settings: heartbeat 1.0s, dead_after_s {args.dead_after_s}, router ring poll 0.5s, "
              f"drain window {args.drain_window_s}s, steer rate cap {args.steer_rate}/s")
        print(f"detection (SIGKILL -> new ring epoch in Redis): {summary(detection)}")
        print(f"recovery (SIGKILL -> every client of the dead worker joined again): {summary(recovery)}")
        print(f"drain of {args.drain_clients} clients: worker reports drained after {drain_s:.2f}s; "
              f"last client joined elsewhere after {moved_s:.2f}s "
              f"(pace bound: {max(args.drain_window_s, args.drain_clients / args.steer_rate):.2f}s + jitter <= 1s)")
    finally:
        for process in (router, control, node):
            if process is not None:
                process.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
