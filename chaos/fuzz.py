"""Fuzzing a live worker: random and mutated frames, each checked against its documented answer.

Owns generating bad client input at two levels (ringcast frames: mutated and
random JSON/msgpack, wrong types, odd rooms, deep nesting; WebSocket frames:
reserved bits and opcodes, unmasked, lying lengths, invalid UTF-8, bad close
frames), sending each one followed by a sentinel `ping`, and judging what came
back before the sentinel's `pong`: an `error` whose code the pure decoder
(node.protocol) predicts, a close with the code RFC 6455 / docs/protocol.md
give, or a normal reply. It measures the worker's RSS before and after.

It must not start or stop anything it did not start itself: `run()` aims at a
worker given by host/port/pid; `main()` (python -m chaos.fuzz) starts its own
redis-server and node through chaos.cluster and stops them by PID. With
`--auth` that node requires tokens (a throwaway HS256 secret, handed over in
the environment) and every fuzz connection upgrades with a freshly minted,
valid token, scoped as AUTH_SCOPE says, so the fuzz runs the authenticated
paths (scope checks, FORBIDDEN, per-user buckets). A run is bounded by its
frame count and by `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Union

import jwt
import msgpack
import orjson
import psutil

from chaos.rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, client_frame, close_payload
from node import protocol
from node.cli import SECRETS_ENV  # how `ringcast node` takes signing keys without a command line

DOCUMENTED_ERRORS = {code.value for code in protocol.ErrorCode} - {protocol.ErrorCode.INTERNAL_ERROR.value}
DOCUMENTED_CLOSES = {int(code) for code in protocol.CloseCode} - {int(protocol.CloseCode.INTERNAL_ERROR)}
NORMAL_REPLIES = {"joined", "left", "ack", "pong", "history", "message", "moved"}
SENTINEL = "~fuzz-sentinel~"
MAX_FAILURE_SAMPLES = 20
# The worker under fuzz must run with these (or looser): the fuzzer is not testing rate limits.
WORKER_FLAGS = [
    "--message-rate-per-s", "1000000", "--message-burst", "1000000", "--user-message-rate-per-s", "1000000",
    "--accept-rate-per-s", "100000", "--accept-burst", "100000", "--max-rooms-per-connection", "20",
]
# What a fuzz connection's token allows with --auth: the rooms the generator uses, partly, so
# that some frames are in scope (answered as without auth) and some get FORBIDDEN.
AUTH_SCOPE = {"sub": "fuzzer", "rooms": ["fuzz", "fuzz:*"], "publish": ["fuzz:a"]}
AUTH_KID = "fuzz"
# Upgrade headers: fixed, or made anew for every (re)connection (a freshly minted token).
UpgradeHeaders = Union[dict[str, str], Callable[[], dict[str, str]]]


@dataclass
class Case:
    """One fuzz frame (raw bytes on the wire) and the answer it must get."""

    kind: str
    wire: bytes
    expect: tuple  # ("error", code) | ("close", code) | ("reply",): any normal reply or documented error | ("none",)


@dataclass
class Report:
    frames: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    closes: dict[int, int] = field(default_factory=dict)
    reconnects: int = 0
    # Valid frames with nothing before the sentinel (a publish without id: its echo comes later, via the bus).
    unanswered: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    rss_before_bytes: int = 0
    rss_after_bytes: int = 0
    rss_peak_bytes: int = 0
    seconds: float = 0.0

    def fail(self, text: str) -> None:
        self.failures += 1
        if len(self.failure_samples) < MAX_FAILURE_SAMPLES:
            self.failure_samples.append(text)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["closes"] = {str(k): v for k, v in sorted(self.closes.items())}
        out["frames_per_s"] = round(self.frames / self.seconds, 1) if self.seconds else 0.0
        return out


# --- generators ---------------------------------------------------------------------------

ROOMS = ["fuzz", "fuzz:a", "fuzz/b", "x" * 128, "x" * 129, "", "a b", "a\x00b", "räum", "fuzz#1", 7, None, [], {}]
TYPES = ["join", "leave", "message", "history", "ping", "refresh", "Join", "", "nope", 1, None]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 40 or roll < 0.3:
        return rng.choice([
            None, True, False, 0, -1, 2**53 + 1, 2**63, -(2**64), 1.5, float("1e308"), "",
            "x" * rng.randint(0, 300), "\x00\x1b[31m\u202e\ufeff", rng.randbytes(8).decode("latin-1"),
        ])
    if roll < 0.65:
        if rng.random() < 0.3:
            return _nested(rng.randint(1, 80))  # around max_json_depth, on both sides
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "type", "room", "id", "text", "since", "seq", ""]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _frame_obj(rng: random.Random) -> dict:
    obj: dict[str, Any] = {"type": rng.choice(TYPES)}
    if rng.random() < 0.8:
        obj["room"] = rng.choice(ROOMS)
    if rng.random() < 0.5:
        obj["id"] = rng.choice([1, "r", "x" * 65, 2**60, True, None, [], 1.5])
    if rng.random() < 0.6:
        for key in rng.sample(list(protocol.DATA_KEYS), rng.randint(0, 2)):
            obj[key] = _random_value(rng)
    if rng.random() < 0.2:
        obj["since"] = rng.choice([
            {"seq": rng.randint(-2, 10), "epoch": "e"}, {"seq": "1"}, 5, {"seq": 2**64},
            {"seq": protocol.MAX_SEQ, "epoch": ""}, {"seq": protocol.MAX_SEQ + 1}, {"seq": 10**14}, {"seq": 2**53},
        ])
    if rng.random() < 0.1:
        obj["limit"] = rng.choice([0, 1, 1000, -1, "5", True, protocol.MAX_SEQ + 1])
    if rng.random() < 0.2:
        obj["extra"] = _random_value(rng)
    return obj


def _encode(obj: Any, codec: str) -> bytes | None:
    try:
        return orjson.dumps(obj) if codec == protocol.JSON else msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, orjson.JSONEncodeError):
        return None


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if not data or op < 0.3:
            data.insert(rng.randint(0, len(data)), rng.randrange(256))
        elif op < 0.6:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.8:
            del data[rng.randrange(len(data))]
        else:
            cut = rng.randrange(len(data))
            data = data[:cut] if rng.random() < 0.5 else data + data[cut:]
    return bytes(data)


class Generator:
    def __init__(self, rng: random.Random, decoder: protocol.Decoder, max_frame_bytes: int) -> None:
        self.rng = rng
        self.decoder = decoder
        self.max_frame_bytes = max_frame_bytes

    def _expect_for_payload(self, payload: bytes, codec: str, binary: bool) -> tuple:
        """What the pure decoder says the worker must answer to one whole data frame."""
        if len(payload) > self.max_frame_bytes:
            return ("close", int(protocol.CloseCode.MESSAGE_TOO_BIG))
        if not binary:
            try:
                text: str | bytes = payload.decode("utf-8")
            except UnicodeDecodeError:
                return ("close", int(protocol.CloseCode.INVALID_PAYLOAD))
        else:
            text = payload
        try:
            self.decoder.decode(text, codec)
        except protocol.ProtocolError as exc:
            return ("error", exc.code.value)
        return ("reply",)

    def data_case(self, codec: str) -> Case:
        rng = self.rng
        roll = rng.random()
        binary = codec == protocol.MSGPACK
        if roll < 0.45:
            kind = "structured"
            payload = _encode(_frame_obj(rng), codec) or b"{}"
        elif roll < 0.8:
            kind = "mutated"
            payload = _mutate(rng, _encode(_frame_obj(rng), codec) or b"{}")
            if not binary and rng.random() < 0.8:  # keep most text frames valid UTF-8, so the socket lives on
                payload = payload.decode("utf-8", "replace").encode("utf-8")
        elif roll < 0.9:
            kind = "random_bytes"
            payload = rng.randbytes(rng.randint(0, 200))
            if not binary and rng.random() < 0.7:
                payload = payload.decode("latin-1").encode("utf-8")
        elif roll < 0.95:
            kind = "wrong_frame_type"
            binary = not binary
            payload = _encode({"type": "ping"}, protocol.MSGPACK if binary else protocol.JSON) or b""
        else:
            kind = "oversized"
            payload = b'{"type":"message","text":"' + b"x" * self.max_frame_bytes + b'"}'
        opcode = OP_BINARY if binary else OP_TEXT
        return Case(kind, client_frame(opcode, payload), self._expect_for_payload(payload, codec, binary))

    def wire_case(self) -> Case:
        """A malformed or unusual WebSocket frame; most end the connection."""
        rng = self.rng
        body = b'{"type":"ping"}'
        choice = rng.randrange(10)
        if choice == 0:
            return Case("rsv_bits", client_frame(OP_TEXT, body, rsv=rng.randint(1, 7)), ("close", 1002))
        if choice == 1:
            return Case("reserved_opcode", client_frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), body), ("close", 1002))
        if choice == 2:
            # RFC 6455: a server must close the connection on an unmasked client frame.
            return Case("unmasked", client_frame(OP_TEXT, body, masked=False), ("close", 1002))
        if choice == 3:
            return Case("length_bomb", client_frame(OP_TEXT, b"", claimed_length=rng.choice([2**20, 2**31, 2**63 - 1])), ("close", 1009))
        if choice == 4:
            return Case("long_control", client_frame(OP_PING, b"p" * 126), ("close", 1002))
        if choice == 5:
            return Case("fragmented_control", client_frame(OP_PING, b"p", fin=False), ("close", 1002))
        if choice == 6:
            return Case("orphan_continuation", client_frame(OP_CONT, body), ("close", 1002))
        if choice == 7:
            # Codes a peer may not send (RFC 6455 section 7.4): undefined below 3000, 1005, 1006, 1015, 5000+.
            code = rng.choice([0, 999, 1004, 1005, 1015, 2999, 1006, 5000])
            return Case("bad_close_code", client_frame(OP_CLOSE, close_payload(code)), ("close", 1002))
        if choice == 8:
            return Case("client_close", client_frame(OP_CLOSE, close_payload(rng.choice([1000, 1001, 3000, 4999]))), ("close", 1000))
        # A fragmented text message split in two is legal: it must get the same answer as one frame.
        half = len(body) // 2
        return Case(
            "fragmented_text",
            client_frame(OP_TEXT, body[:half], fin=False) + client_frame(OP_CONT, body[half:]),
            ("reply",),
        )


# --- driving one connection ------------------------------------------------------------------

class FuzzConnection:
    def __init__(
        self, host: str, port: int, rng: random.Random, report: Report, upgrade_headers: UpgradeHeaders | None = None
    ) -> None:
        self.host, self.port, self.rng, self.report = host, port, rng, report
        self.upgrade_headers = upgrade_headers or {}  # e.g. Authorization, when the worker requires tokens
        self.ws: RawWebSocket | None = None
        self.codec = protocol.JSON
        self.generator: Generator | None = None
        self.sentinels = 0

    async def _connect(self) -> None:
        self.codec = self.rng.choice([protocol.JSON, protocol.MSGPACK])
        headers = dict(self.upgrade_headers() if callable(self.upgrade_headers) else self.upgrade_headers)
        if self.codec == protocol.MSGPACK:
            headers["Sec-WebSocket-Protocol"] = protocol.SUBPROTOCOL_MSGPACK
        self.ws = await RawWebSocket.connect(self.host, self.port, headers=headers)
        welcome = await self._read_data()
        limits = welcome["limits"]
        decoder = protocol.Decoder(protocol.ProtocolLimits(
            max_room_name_chars=limits["maxRoomNameChars"], max_frame_bytes=limits["maxFrameBytes"],
        ))
        self.generator = Generator(self.rng, decoder, limits["maxFrameBytes"])
        # Be a member of a room so that valid publishes have somewhere to go.
        self.ws.send(OP_BINARY if self.codec == protocol.MSGPACK else OP_TEXT,
                     _encode({"type": "join", "room": "fuzz"}, self.codec) or b"")

    async def _read_data(self) -> dict:
        assert self.ws is not None
        while True:
            opcode, payload = await self.ws.recv()
            if opcode in (OP_TEXT, OP_BINARY):
                return orjson.loads(payload) if opcode == OP_TEXT else msgpack.unpackb(payload)

    def _sentinel(self) -> tuple[str, bytes]:
        self.sentinels += 1
        sentinel_id = f"{SENTINEL}{self.sentinels}"
        frame = _encode({"type": "ping", "id": sentinel_id}, self.codec) or b""
        return sentinel_id, client_frame(OP_BINARY if self.codec == protocol.MSGPACK else OP_TEXT, frame)

    async def one(self) -> None:
        if self.ws is None:
            await self._connect()
            self.report.reconnects += 1
        assert self.ws is not None and self.generator is not None
        case = self.generator.wire_case() if self.rng.random() < 0.05 else self.generator.data_case(self.codec)
        report = self.report
        report.frames += 1
        report.by_kind[case.kind] = report.by_kind.get(case.kind, 0) + 1
        sentinel_id, sentinel = self._sentinel()
        self.ws.send_raw(case.wire + sentinel)
        answers: list[tuple[str, Any]] = []
        closed = False
        try:
            while True:
                opcode, payload = await self.ws.recv(timeout_s=30)
                if opcode == OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    answers.append(("close", code))
                    closed = True
                    break
                if opcode == OP_PING:
                    self.ws.send(OP_PONG, payload)
                    continue
                if opcode == OP_PONG:
                    answers.append(("wspong", None))
                    continue
                frame = orjson.loads(payload) if opcode == OP_TEXT else msgpack.unpackb(payload)
                if frame.get("type") == "pong" and frame.get("id") == sentinel_id:
                    break
                answers.append((frame.get("type"), frame.get("code")))
        except (asyncio.IncompleteReadError, ConnectionError):
            answers.append(("eof", None))
            closed = True
        self._judge(case, answers)
        if closed:
            self.ws.close()
            self.ws = None

    def _judge(self, case: Case, answers: list[tuple[str, Any]]) -> None:
        report = self.report
        if not answers:
            report.unanswered[case.kind] = report.unanswered.get(case.kind, 0) + 1
            if case.expect[0] != "reply":
                report.fail(f"{case.kind}: no answer at all for {case.wire[:80]!r}")
        for kind, code in answers:
            if kind == "error":
                report.errors[code] = report.errors.get(code, 0) + 1
                if code not in DOCUMENTED_ERRORS:
                    report.fail(f"{case.kind}: undocumented error {code} for {case.wire[:80]!r}")
            elif kind == "close":
                report.closes[code] = report.closes.get(code, 0) + 1
                if code not in DOCUMENTED_CLOSES:
                    report.fail(f"{case.kind}: undocumented close {code} for {case.wire[:80]!r}")
            elif kind == "eof":
                report.fail(f"{case.kind}: socket cut without a close frame for {case.wire[:80]!r}")
            elif kind not in NORMAL_REPLIES and kind != "wspong":
                report.fail(f"{case.kind}: unexpected frame type {kind!r}")
        expected = case.expect
        if expected[0] == "error" and ("error", expected[1]) not in answers:
            report.fail(f"{case.kind}: expected error {expected[1]}, got {answers} for {case.wire[:80]!r}")
        elif expected[0] == "close" and ("close", expected[1]) not in answers:
            report.fail(f"{case.kind}: expected close {expected[1]}, got {answers} for {case.wire[:80]!r}")
        elif expected[0] == "reply" and any(kind == "close" for kind, _ in answers):
            report.fail(f"{case.kind}: a valid frame closed the connection: {answers} for {case.wire[:80]!r}")


async def run(
    host: str, port: int, worker_pid: int, frames: int, seed: int = 1, connections: int = 4,
    upgrade_headers: UpgradeHeaders | None = None, max_seconds: float | None = None,
) -> Report:
    """Throw `frames` fuzz frames at the worker on host:port over `connections` sockets.

    With `max_seconds`, connections stop sending once the run is that old (a
    failure, with the counts so far); the frame in flight still waits for its
    answer (at most 30 s).
    """
    report = Report()
    process = psutil.Process(worker_pid)
    report.rss_before_bytes = report.rss_peak_bytes = process.memory_info().rss
    started = time.monotonic()
    per_connection = [frames // connections + (1 if i < frames % connections else 0) for i in range(connections)]

    async def drive(index: int, count: int) -> None:
        fuzz = FuzzConnection(host, port, random.Random(seed * 1000 + index), report, upgrade_headers)
        for n in range(count):
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                if not any("--max-seconds" in sample for sample in report.failure_samples):
                    report.fail(f"the run did not finish within --max-seconds {max_seconds}")
                break
            await fuzz.one()
            if index == 0 and n % 1000 == 0:
                report.rss_peak_bytes = max(report.rss_peak_bytes, process.memory_info().rss)
        if fuzz.ws is not None:
            fuzz.ws.close()

    await asyncio.gather(*(drive(i, count) for i, count in enumerate(per_connection)))
    report.seconds = round(time.monotonic() - started, 2)
    report.rss_after_bytes = process.memory_info().rss
    report.rss_peak_bytes = max(report.rss_peak_bytes, report.rss_after_bytes)
    return report


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """This process's environment variable `name` set to `value` (or unset) inside the block only."""
    saved = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if saved is not None:
            os.environ[name] = saved


def auth_headers(secret: str, lifetime_s: float) -> Callable[[], dict[str, str]]:
    """Upgrade headers carrying a fresh token (AUTH_SCOPE, HS256, kid AUTH_KID) each time they are asked for."""
    def mint() -> dict[str, str]:
        claims = dict(AUTH_SCOPE, exp=int(time.time() + lifetime_s))
        return {"Authorization": "Bearer " + jwt.encode(claims, secret, algorithm="HS256", headers={"kid": AUTH_KID})}
    return mint


def main(argv: list[str] | None = None) -> int:
    """Start redis + one worker (loopback, free ports), fuzz it, print the report as JSON, stop both."""
    from chaos.cluster import NodeProcess, RedisServer, free_port, free_port_range

    parser = argparse.ArgumentParser(prog="python -m chaos.fuzz", description=main.__doc__)
    parser.add_argument("--frames", type=int, default=100_000, help="fuzz frames to send (default 100000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--auth", action="store_true",
                        help="the worker requires tokens; every fuzz connection upgrades with a fresh valid one"
                             " (scope: AUTH_SCOPE in chaos/fuzz.py)")
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="stop the run after this long, a failure (default 1800)")
    args = parser.parse_args(argv)
    auth_args: list[str] = []
    headers: UpgradeHeaders | None = None
    secret = secrets.token_urlsafe(32)  # a throwaway key for this run; to the node by environment, not argv
    if args.auth:
        auth_args = ["--auth", "required"]
        headers = auth_headers(secret, lifetime_s=args.max_seconds + 120)  # outlives the run
    redis = RedisServer(port=free_port()).start()
    node = NodeProcess(port=free_port_range(1), workers=1, args=["--redis", redis.url, *WORKER_FLAGS, *auth_args])
    try:
        with _environment(SECRETS_ENV, f"{AUTH_KID}={secret}" if args.auth else None):  # the node inherits it
            node.start()
        pid = node.worker_pid(0)
        report = asyncio.run(
            run(node.host, node.port, pid, args.frames, args.seed, args.connections, headers, args.max_seconds)
        )
        alive = psutil.pid_exists(pid) and node.worker_pid(0) == pid
        print(json.dumps(dict(report.as_dict(), auth=args.auth, worker_survived=alive), indent=2))
        return 0 if report.failures == 0 and alive else 1
    finally:
        node.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
