"""The load generator's lean WebSocket member: one asyncio protocol per socket.

Owns the client side of RFC 6455 at the lowest CPU cost Python allows: the
upgrade written by hand, the server's (unmasked) frames walked with plain
byte indexing in batches per `data_received`, client frames masked as the
RFC requires, and per-connection verification of what arrives. Every
`message` frame is counted from its first bytes; the JSON of a frame is
decoded only on *sampled* connections (and publishers), which check the
room's sequence numbers (a repeat is a duplicate, a jump a gap, a skipped
seq that arrives after all is reordered) and the latency from the timestamp
the publisher embedded (`data.t`, CLOCK_MONOTONIC nanoseconds, which is one
clock for every process of the machine).
A second dialect speaks the tutorial's server (../shared/seed_server, the
measuring stick of issue 12): the same `join`/`message` frames but no
`joined` answer and no `seq`, so a publish carries a marker in its text,
"<publisher>:<n>:<send-ns>", and sampled members check order per publisher
(`n`) instead of per room (`seq`). It must not decide
how many sockets to open or when to publish (chaos/load/worker.py does).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import orjson

from chaos.load.stats import Tally, add_latency

MESSAGE_PREFIX = b'{"type":"message"'  # how the server's encoder starts every message frame (node/protocol.py)
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE_BYTES = 16 * 1024
MAX_SKIPPED_TRACKED = 10_000  # per sampled member: skipped seqs remembered to tell a late one from a duplicate
RINGCAST, SEED = "ringcast", "seed"  # the wire dialects: ringcast's protocol, the tutorial's server
DIALECTS = (RINGCAST, SEED)


class UpgradeFailed(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"upgrade answered {status}: {detail}")
        self.status = status


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame; the mask is applied with one big-integer XOR (no per-byte loop)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    if not length:
        return header + key
    stream = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(length, "big")
    return header + key + masked


def message_frame(room: str, sent_ns: int, number: int, publisher: int) -> bytes:
    """A publish: `t` the send time (latency), `n` the publisher's count, `p` who sent it (its own come back)."""
    payload = b'{"type":"message","room":"%s","data":{"t":%d,"n":%d,"p":%d}}' % (
        room.encode(), sent_ns, number, publisher)
    return masked_frame(OP_TEXT, payload)


def encode_marker(publisher: int, number: int, sent_ns: int) -> str:
    """The text of a publish to the tutorial's server: who sent it, its count, its send time (monotonic ns)."""
    return f"{publisher}:{number}:{sent_ns}"


def parse_marker(text: object) -> tuple[int, int, int] | None:
    """(publisher, number, sent_ns) from `encode_marker`'s text; None for any other text."""
    if not isinstance(text, str):
        return None
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isascii() and p.isdecimal() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def seed_message_frame(room: str, sent_ns: int, number: int, publisher: int) -> bytes:
    """A publish to the tutorial's server (no `data`, no seq back): the marker travels as its `text`."""
    payload = b'{"type":"message","room":"%s","text":"%s"}' % (
        room.encode(), encode_marker(publisher, number, sent_ns).encode())
    return masked_frame(OP_TEXT, payload)


def track_order(tally: Tally, skipped: set[int], last: int, number: int) -> int:
    """Count `number` against the highest seen so far (`last`) in one ordered stream; the new highest.

    A repeat is a duplicate, a jump a gap (the numbers it went past are
    remembered in `skipped`, bounded), a skipped number that comes after all
    is reordered. The stream is a room's `seq` (ringcast) or one publisher's
    `n` (the tutorial's server).
    """
    if number in skipped:
        skipped.discard(number)
        tally.reordered += 1
        return last
    if number <= last:
        tally.duplicates += 1
        return last
    if number > last + 1:
        tally.gaps += 1
        tally.gap_messages += number - last - 1
        if len(skipped) < MAX_SKIPPED_TRACKED:
            skipped.update(range(last + 1, min(number, last + 1 + MAX_SKIPPED_TRACKED)))
    return number


class Window:
    """The measurement window shared by every socket of a process (monotonic ns; 0 = not yet known)."""

    __slots__ = ("start_ns", "end_ns")

    def __init__(self) -> None:
        self.start_ns = 0
        self.end_ns = 0


class MemberSocket(asyncio.Protocol):
    """One connection that joins one room and counts (and, if sampled, verifies) what it receives."""

    def __init__(self, host: str, port: int, path: str, room: str, sampled: bool, tally: Tally, window: Window,
                 late_join: bool = False) -> None:
        self.host, self.port, self.path, self.room = host, port, path, room
        self.late_join = late_join  # joins while the room is live (arrival mode): not every stream starts at 0
        self.sampled = sampled
        self.tally = tally
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buffer = b""
        self.joined: asyncio.Future = asyncio.get_running_loop().create_future()
        self.join_seq = -1  # room position when the live stream started (from `joined`)
        self.epoch = ""
        self.received = 0  # message frames received (every connection)
        self.last_seq = -1  # sampled: highest seq seen
        self.skipped: set[int] = set()  # sampled: seqs a jump went past and that have not come (yet)
        self.closed = False
        self.closing_on_purpose = False
        self.publisher_id: int | None = None  # set on a publishing member (always sampled): `p` of its messages
        self.sent = 0  # publishes written
        self.own_received = 0  # of those, come back through the room (sequenced and delivered)
        self.refused = 0  # error frames after joining: a publish the server did not take (or could not confirm)

    # --- connection life -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        transport.write(request.encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(f"connection lost before joining: {exc}"))
        elif not self.closing_on_purpose:
            self.tally.closed_by_server += 1
            self.tally.connected -= 1

    def close(self) -> None:
        self.closing_on_purpose = True
        if self.transport is not None and not self.closed:
            try:
                self.transport.write(masked_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            finally:
                self.transport.close()

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame)

    def publish(self, frames: bytes, count: int) -> None:
        """Write `count` publishes (made by `message_frame` with this socket's `publisher_id`) at once."""
        if self.transport is not None and not self.closed:
            self.transport.write(frames)
            self.sent += count

    def own_messages_settled(self) -> bool:
        """Every publish came back through the room or was refused: the room's position is final for it."""
        return self.closed or self.own_received + self.refused >= self.sent

    # --- receiving -------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HANDSHAKE_BYTES:
                    self._fail(UpgradeFailed(0, "handshake answer too long"))
                self.buffer = buf
                return
            head = buf[:end].decode("latin-1")
            status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
            if status != 101:
                self._fail(UpgradeFailed(status, head.splitlines()[0] if head else "no answer"))
                return
            self.upgraded = True
            self._upgraded()
            buf = buf[end + 4:]
        now = time.monotonic_ns()
        window = self.window
        in_window = window.start_ns <= now < window.end_ns and window.start_ns > 0
        size = len(buf)
        pos = 0
        count = 0
        while size - pos >= 2:
            first = buf[pos]
            length = buf[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > size:
                break
            start = pos + header
            pos = end
            opcode = first & 0x0F
            if opcode == OP_TEXT and buf.startswith(MESSAGE_PREFIX, start):
                count += 1
                if self.sampled:
                    self._verify(buf[start:end], now, in_window)
            elif opcode == OP_TEXT or opcode == OP_BINARY:
                self._control_frame(orjson.loads(buf[start:end]))
            elif opcode == OP_PING:
                self.transport.write(masked_frame(OP_PONG, buf[start:end]))
            elif opcode == OP_CLOSE:
                self.transport.close()
                break
        self.buffer = buf[pos:] if pos < size else b""
        if count:
            self.received += count
            tally = self.tally
            tally.frames_total += count
            if in_window:
                tally.frames_in_window += count

    def _upgraded(self) -> None:
        """The upgrade is through: ask to join (ringcast answers `joined`, which completes `self.joined`)."""
        self.transport.write(masked_frame(OP_TEXT, b'{"type":"join","room":"%s"}' % self.room.encode()))

    def _verify(self, body: bytes, now_ns: int, in_window: bool) -> None:
        frame = orjson.loads(body)
        tally = self.tally
        tally.sampled_frames += 1
        seq = frame["seq"]
        epoch = frame["epoch"]
        if epoch != self.epoch and self.epoch:
            self.epoch = epoch  # the room's stream restarted (Redis lost it): numbering restarts, not a gap
            self.last_seq = seq
            self.skipped.clear()
        else:
            self.epoch = epoch  # a room with no message yet joins with epoch "": the first message names it
            last = self.last_seq if self.last_seq >= 0 else self.join_seq
            newest = track_order(tally, self.skipped, last, seq)
            if newest != last:
                self.last_seq = newest
        data = frame.get("data")
        if isinstance(data, dict) and self.publisher_id is not None and data.get("p") == self.publisher_id:
            self.own_received += 1
        if isinstance(data, dict) and "t" in data:
            latency = now_ns - data["t"]
            add_latency(tally.latency_all, latency)
            if in_window:
                add_latency(tally.latency_window, latency)

    def _control_frame(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "joined" and not self.joined.done():
            self.join_seq = int(frame.get("seq") or 0)
            self.epoch = str(frame.get("epoch") or "")
            self.tally.connected += 1
            self.joined.set_result(self.join_seq)
        elif kind == "error":
            # a refused join is counted apart: the socket is retried, the run goes on
            code = str(frame.get("code")) if self.joined.done() else f"join:{frame.get('code')}"
            if self.joined.done():
                self.refused += 1
            self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
            self.tally.error_examples.setdefault(code, str(frame.get("message"))[:200])
            if not self.joined.done():
                self.joined.set_exception(ConnectionError(f"join refused: {code}"))

    def _fail(self, exc: Exception) -> None:
        if not self.joined.done():
            self.joined.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class SeedMemberSocket(MemberSocket):
    """A member of a room on the tutorial's server: no `joined` answer, no seq; order and latency by marker.

    The server never confirms a join, so the member counts as joined once its
    `join` is written (the server reads a socket's frames in order, and the
    coordinator waits IDLE_SETTLE_S after the ramp before anyone publishes).
    `join_seq` stays 0: what a member must receive is everything published to
    its room, counted by the publishers (chaos/load/worker.py).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_by_publisher: dict[int, int] = {}  # sampled: highest `n` seen from each publisher
        self.skipped_by_publisher: dict[int, set[int]] = {}

    def _upgraded(self) -> None:
        super()._upgraded()
        self.join_seq = 0
        self.tally.connected += 1
        self.joined.set_result(0)

    def _verify(self, body: bytes, now_ns: int, in_window: bool) -> None:
        tally = self.tally
        tally.sampled_frames += 1
        marker = parse_marker(orjson.loads(body).get("text"))
        if marker is None:  # not one of the bench's publishes: the room is shared with someone else
            tally.errors["unmarked"] = tally.errors.get("unmarked", 0) + 1
            tally.error_examples.setdefault("unmarked", body[:200].decode(errors="replace"))
            return
        publisher, number, sent_ns = marker
        # a member that joined a live room starts each publisher's stream at what it first sees from it
        last = self.last_by_publisher.get(publisher, number - 1 if self.late_join else -1)
        skipped = self.skipped_by_publisher.setdefault(publisher, set())
        self.last_by_publisher[publisher] = track_order(tally, skipped, last, number)
        if publisher == self.publisher_id:
            self.own_received += 1
        latency = now_ns - sent_ns
        add_latency(tally.latency_all, latency)
        if in_window:
            add_latency(tally.latency_window, latency)

    def _control_frame(self, frame: dict) -> None:
        # the tutorial's server answers only a frame it cannot parse: {"error": "INVALID_MESSAGE_FORMAT"}
        if "error" in frame:
            code = str(frame["error"])
            self.refused += 1
            self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
            self.tally.error_examples.setdefault(code, str(frame)[:200])


SOCKETS: dict[str, type[MemberSocket]] = {RINGCAST: MemberSocket, SEED: SeedMemberSocket}
PUBLISH_FRAMES = {RINGCAST: message_frame, SEED: seed_message_frame}
