"""What the pure steps of one published message cost a worker in Python, timed alone (issue 12).

Times, with `timeit`, each step a worker runs once per published message
that does no I/O, on the load generator's own publish frame
(chaos/load/wire.py `message_frame`): reading the client frame from its
bytes, decoding and checking it, packing the bus body, reading the bus
payload back, and building the members' frame. Each figure is the best of
`--repeat` runs of `--number` calls, in µs per call; nothing is started,
nothing leaves the process. It measures only: the end-to-end cost per
delivery is `ringcast bench compare`'s, and this module must not judge it.

    .venv/bin/python -m chaos.bench.hot_path --number 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit

from chaos.load.wire import message_frame
from node import bus_wire, protocol
from node.bus import BusMessage
from node.config import NodeConfig
from node.hub import Hub
from node.session import pack_message
from node.ws_reader import FrameReader

MAX_NUMBER = 1_000_000  # calls per run, at most
MAX_REPEAT = 50  # runs per step, at most
ROOM = "room-17"
SENDER = "c0ffee00c0ffee00"  # a connection id's length
SEQ, EPOCH = 123_456, "1733241600123"  # a stream position of the size Redis writes


def steps() -> list[tuple[str, object]]:
    """(what, a call doing it once) for each pure per-message step, in the order a message meets them."""
    raw = message_frame(ROOM, time.monotonic_ns(), 123, 45)
    reader = FrameReader(protocol.ProtocolLimits().max_frame_bytes)
    ((_, text),) = reader.feed(raw)
    decoder = protocol.Decoder(protocol.ProtocolLimits())
    publish = decoder.decode(text, protocol.JSON)
    if not isinstance(publish, protocol.Publish):
        raise AssertionError(f"the load generator's frame decoded as {publish!r}, not a publish")
    max_message_bytes = NodeConfig().max_message_bytes  # the default setting
    body = pack_message(ROOM, SENDER, publish.data_key, publish.data, max_message_bytes)
    payload = bus_wire.encode(SEQ, EPOCH, body)
    message = BusMessage(ROOM, SEQ, EPOCH, body)
    return [
        ("read the client frame (FrameReader.feed)", lambda: reader.feed(raw)),
        ("decode and check it (Decoder.decode)", lambda: decoder.decode(text, protocol.JSON)),
        ("pack the bus body (session.pack_message)", lambda: pack_message(ROOM, SENDER, publish.data_key,
                                                                          publish.data, max_message_bytes)),
        ("read the bus payload (bus_wire.decode)", lambda: bus_wire.decode(payload)),
        ("build the members' JSON frame (Hub.message_frame)", lambda: Hub.message_frame(message, False)),
    ]


def measure(number: int, repeat: int) -> list[dict]:
    out = []
    for what, call in steps():
        best = min(timeit.repeat(call, number=number, repeat=repeat))
        out.append({"step": what, "us_per_call": round(1e6 * best / number, 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.bench.hot_path",
        description="µs per call of each pure step a worker runs once per published message (no I/O).")
    parser.add_argument("--number", type=int, default=20_000, help=f"calls per run (1..{MAX_NUMBER:,})")
    parser.add_argument("--repeat", type=int, default=5, help=f"runs per step; the best is kept (1..{MAX_REPEAT})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not 1 <= args.number <= MAX_NUMBER or not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--number must be 1..{MAX_NUMBER:,} and --repeat 1..{MAX_REPEAT}")
    rows = measure(args.number, args.repeat)
    total = round(sum(r["us_per_call"] for r in rows), 3)
    if args.json:
        print(json.dumps({"number": args.number, "repeat": args.repeat, "steps": rows, "total_us": total}))
        return 0
    print(f"best of {args.repeat} runs of {args.number:,} calls, µs per call")
    for row in rows:
        print(f"{row['us_per_call']:8.2f}  {row['step']}")
    print(f"{total:8.2f}  in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
