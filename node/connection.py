"""One client connection's state on a worker.

Owns what the worker remembers per socket: its id, codec, transport, joined
rooms, rate-limit buckets, verified identity, heartbeat timestamps and queued outbound frames.
It is deliberately small (`__slots__`, no per-connection tasks or timers):
idle memory per connection is a product number. It does no I/O itself; the
outbox writes its frames and the worker reads its socket.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from node import frames, protocol
from node.auth import Identity
from node.ratelimit import TokenBucket

if TYPE_CHECKING:
    from node.ws_server import WebSocketEndpoint


class Connection:
    __slots__ = (
        "id", "codec", "binary", "ws", "transport", "ip", "rooms", "bucket", "rejections",
        "pending", "flushed_in", "closed", "ping_sent_at", "last_ping_at", "close_reason",
        "identity", "user_bucket",
    )

    def __init__(
        self,
        connection_id: str,
        codec: str,
        ws: WebSocketEndpoint,
        transport: asyncio.Transport,
        ip: str,
        bucket: TokenBucket,
        now: float,
    ) -> None:
        self.id = connection_id
        self.codec = codec
        self.binary = codec == protocol.MSGPACK
        self.ws = ws  # reads the socket and runs its close handshake
        self.transport = transport
        self.ip = ip
        self.rooms: set[str] = set()
        self.bucket = bucket
        self.rejections = 0  # consecutive rate-limited frames
        self.pending: list[bytes] = []  # finished frames waiting for the end-of-turn flush
        self.flushed_in = -1  # number of the outbox flush that last wrote to it, -1 none (node/outbox.py)
        self.closed = False
        self.ping_sent_at: float | None = None  # a ping is outstanding since then
        self.last_ping_at = now
        self.close_reason = "client"
        self.identity: Identity | None = None  # the verified token's holder (a `refresh` replaces it); None when auth is off
        self.user_bucket: TokenBucket | None = None  # shared by this user's connections on the worker

    def frame(self, server_frame: dict[str, Any]) -> bytes:
        """Encode one server frame for this connection's codec, WebSocket header included."""
        return frames.data_frame(protocol.encode(server_frame, self.codec), self.binary)
