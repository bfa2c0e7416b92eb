"""A fake asyncio transport and Connection objects over it, for in-process tests of the hub and outbox.

The transport records every `write` and models the one thing the outbox asks
the kernel: how many bytes wait in user space (`get_write_buffer_size`). A
peer that reads keeps that at 0; a paused peer (`reading=False`, a slow
consumer) makes it grow by every byte written until `drain()`. No sockets,
no processes: a test drives node.hub / node.outbox on its own event loop.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgpack
import orjson

from node import frames, protocol
from node.connection import Connection
from node.ratelimit import TokenBucket
from tests.node.wire_helpers import split_server_frames


class FakeTransport(asyncio.Transport):
    def __init__(self, reading: bool = True) -> None:
        super().__init__()
        self.writes: list[bytes] = []  # one entry per write() call, the very objects passed in
        self.reading = reading  # False: the peer reads nothing and written bytes pile up in user space
        self.buffered_bytes = 0
        self.closing = False
        self.aborted = False
        self.writes_after_close = 0  # a write on a closed transport is a bug of the caller

    def write(self, data: bytes) -> None:
        if self.closing:
            self.writes_after_close += 1
            return
        self.writes.append(data)
        if not self.reading:
            self.buffered_bytes += len(data)

    def drain(self) -> None:
        """The peer caught up with everything written so far."""
        self.buffered_bytes = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered_bytes

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    @property
    def stream(self) -> bytes:
        """Every byte written, in order: what the peer reads."""
        return b"".join(self.writes)

    def frames(self) -> list[tuple[int, bytes]]:
        """The written bytes split into server frames (opcode, payload) by the reference parser."""
        return split_server_frames(self.stream)


_ids = itertools.count(1)


def fake_connection(codec: str = protocol.JSON, reading: bool = True) -> Connection:
    """A worker-side Connection whose socket is a FakeTransport (no WebSocketResponse: the hub never uses it)."""
    return Connection(
        f"c{next(_ids)}", codec, None, FakeTransport(reading), "127.0.0.1",  # type: ignore[arg-type]
        TokenBucket(rate_per_s=1000.0, burst=1000, now=0.0), now=0.0,
    )


def received(conn: Connection) -> list[dict[str, Any]]:
    """The server frames `conn`'s peer has been written, decoded with the connection's codec.

    Asserts each frame has the opcode of that codec (text for JSON, binary for msgpack).
    """
    expected_opcode = frames.OP_BINARY if conn.binary else frames.OP_TEXT
    decoded = []
    for opcode, payload in conn.transport.frames():  # type: ignore[attr-defined]
        assert opcode == expected_opcode, (conn.codec, opcode)
        decoded.append(msgpack.unpackb(payload, raw=False) if conn.binary else orjson.loads(payload))
    return decoded
