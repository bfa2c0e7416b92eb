"""What a room and a kept message cost in Redis memory, measured on a private redis-server.

Starts its own redis-server on a free loopback port (stopped by PID at the
end), publishes with the bus's own publish script (node/bus_redis.py) to
`--rooms` rooms, `--messages` messages each of `--body-bytes` bytes, and
reports per room: MEMORY USAGE of the state hash and of the history stream
(sampled over `--sample` rooms), and INFO used_memory before and after
divided by rooms and by messages. Bounded: at most 100,000 rooms and
1,000,000 messages in all; it never touches another Redis.

    .venv/bin/python -m chaos.bench.redis_memory --rooms 10000 --messages 10 --body-bytes 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import redis.asyncio as redis_async

from chaos.cluster import RedisServer, free_port
from node import envelope
from node.bus_redis import PUBLISH_SCRIPT, BusKeys

MAX_ROOMS = 100_000
MAX_MESSAGES_TOTAL = 1_000_000
KEYS = BusKeys("ringcast:room:", "ringcast:")  # the node's defaults


async def used_memory(client: redis_async.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def measure(rooms: int, messages: int, body_bytes: int, history_size: int, sample: int) -> dict:
    server = RedisServer(port=free_port()).start()
    try:
        client = redis_async.Redis.from_url(server.url)
        try:
            sha = await client.script_load(PUBLISH_SCRIPT)
            body = envelope.pack(envelope.Envelope(1_700_000_000_000, "0123456789abcdef", "text", "x" * body_bytes))
            before = await used_memory(client)
            for start in range(0, rooms, 500):
                pipe = client.pipeline(transaction=False)
                for index in range(start, min(rooms, start + 500)):
                    room = f"room-{index:06d}"
                    for _ in range(messages):
                        pipe.evalsha(sha, 2, KEYS.state_key(room), KEYS.history_key(room), KEYS.channel(room),
                                     body, 300, history_size, 300)
                await pipe.execute()
            after = await used_memory(client)
            state = history = 0
            sampled = min(sample, rooms)
            for index in range(sampled):
                room = f"room-{index:06d}"
                state += await client.memory_usage(KEYS.state_key(room), samples=0) or 0
                history += await client.memory_usage(KEYS.history_key(room), samples=0) or 0
        finally:
            await client.aclose()
    finally:
        server.stop()
    kept = min(messages, history_size)
    return {
        "rooms": rooms, "messages_per_room": messages, "body_bytes_on_the_bus": len(body), "history_size": history_size,
        "memory_usage_state_hash_bytes": round(state / sampled, 1),
        "memory_usage_history_stream_bytes": round(history / sampled, 1),
        "used_memory_delta_per_room_bytes": round((after - before) / rooms, 1),
        "used_memory_delta_per_kept_message_bytes": round((after - before) / (rooms * kept), 1) if kept else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.bench.redis_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=10_000, help=f"rooms to publish to (at most {MAX_ROOMS})")
    parser.add_argument("--messages", type=int, default=10, help="messages per room")
    parser.add_argument("--body-bytes", type=int, default=100, help="text length of each message")
    parser.add_argument("--history-size", type=int, default=100, help="messages kept per room (0: none)")
    parser.add_argument("--sample", type=int, default=200, help="rooms whose keys MEMORY USAGE measures")
    args = parser.parse_args(argv)
    if not 1 <= args.rooms <= MAX_ROOMS or args.messages < 1 or args.rooms * args.messages > MAX_MESSAGES_TOTAL:
        parser.error(f"1 <= --rooms <= {MAX_ROOMS}, --messages >= 1, rooms x messages <= {MAX_MESSAGES_TOTAL}")
    if args.body_bytes < 0 or args.history_size < 0 or args.sample < 1:
        parser.error("--body-bytes and --history-size >= 0, --sample >= 1")
    result = asyncio.run(measure(args.rooms, args.messages, args.body_bytes, args.history_size, args.sample))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
