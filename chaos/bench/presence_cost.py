"""What presence costs Redis: commands and memory per member, and one presence read.

`python -m chaos.bench.presence_cost --members 1000 --rooms 1 [--off]` starts
its own redis-server and a 2-worker node on free loopback ports (with
`--presence-rule 'chat:*'` unless `--off`), joins the members over raw
WebSockets spread over both workers, then prints the Redis commands the joins
cost (INFO commandstats), the Redis memory the presence hashes hold (MEMORY
USAGE) per member, one `presence` read's time and commands, and what closing
every socket costs and leaves behind. Numbers are recorded in
docs/benchmarks.md ("Presence"). Every wait is bounded; everything it started
is stopped by PID. It must not be used against a Redis it did not start (it
reads global counters).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson
import redis

from chaos.cluster import NodeProcess, RedisServer, free_port, free_port_range
from chaos.eventually import eventually

PRESENCE_KEYS = "ringcast:presence:{*"  # the room hashes (node/presence.py), default key prefix
SETTLE_TIMEOUT_S = 30.0  # longest wait for the presence writes or removals to reach Redis


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in client.info("commandstats").items()}


def calls_since(before: dict[str, int], client: redis.Redis) -> dict[str, int]:
    after = command_calls(client)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after) if after.get(k, 0) != before.get(k, 0)}


def listed_members(client: redis.Redis) -> int:
    return sum(client.hlen(key) for key in client.scan_iter(PRESENCE_KEYS))


async def measure(members: int, rooms: int, presence: bool) -> None:
    server = RedisServer(port=free_port()).start()
    flags = ["--redis", server.url, "--bus", "redis", "--max-connections-per-ip", str(members + 10),
             "--accept-burst", str(members + 10), "--control-heartbeat-interval-s", "0"]
    if presence:
        flags += ["--presence-rule", "chat:*"]
    node = NodeProcess(port=free_port_range(2), workers=2, args=flags).start()
    client = redis.Redis.from_url(server.url)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        base_memory = client.info("memory")["used_memory"]
        before = command_calls(client)
        started = time.perf_counter()
        sockets = []
        for i in range(members):
            ws = await session.ws_connect(node.ws_url(i % 2))
            await ws.receive()  # welcome
            await ws.send_str(orjson.dumps({"type": "join", "room": f"chat:{i % rooms}"}).decode())
            sockets.append(ws)
        for ws in sockets:
            while orjson.loads((await ws.receive()).data)["type"] != "joined":
                pass
        joined_s = time.perf_counter() - started
        if presence:
            await eventually(lambda: listed_members(client), equals=members, timeout_s=SETTLE_TIMEOUT_S,
                             what="every member written to Redis")
        join_calls = calls_since(before, client)
        memory = client.info("memory")["used_memory"] - base_memory
        hashes = sum(client.memory_usage(key) or 0 for key in client.scan_iter(PRESENCE_KEYS))

        before = command_calls(client)
        asked = time.perf_counter()
        await sockets[0].send_str(orjson.dumps({"type": "presence" if presence else "ping", "room": "chat:0", "id": 1}).decode())
        while orjson.loads((await sockets[0].receive()).data)["type"] not in ("presence", "pong"):
            pass
        read_ms = (time.perf_counter() - asked) * 1000
        read_calls = calls_since(before, client)

        before = command_calls(client)
        for ws in sockets:
            await ws.close()
        if presence:
            await eventually(lambda: listed_members(client), equals=0, timeout_s=SETTLE_TIMEOUT_S,
                             what="every member removed from Redis")
        close_calls = calls_since(before, client)
        print(f"members={members} rooms={rooms} presence={'on' if presence else 'off'} joined in {joined_s:.2f} s")
        print(f"join commands: {join_calls}")
        print(f"used_memory delta: {memory} B ({memory / members:.0f} B/member, room channels and state included); "
              f"presence hashes: {hashes} B ({hashes / members:.0f} B/member)")
        print(f"one presence read of {members // rooms} members: {read_ms:.1f} ms, commands {read_calls}")
        print(f"close commands: {close_calls}; presence keys left: {len(list(client.scan_iter(PRESENCE_KEYS)))}")
    finally:
        await session.close()
        node.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.bench.presence_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000, help="WebSocket members to join (default 1000)")
    parser.add_argument("--rooms", type=int, default=1, help="rooms chat:0..N-1 they are spread over (default 1)")
    parser.add_argument("--off", action="store_true", help="no --presence-rule: the same joins without presence")
    args = parser.parse_args(argv)
    if not 1 <= args.rooms <= args.members <= 10_000:
        parser.error("1 <= --rooms <= --members <= 10000 (one process's sockets)")
    asyncio.run(measure(args.members, args.rooms, not args.off))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
