"""The worker-to-worker message format carried on a room's bus channel. No I/O.

Owns how a published message is packed for the bus (once, by the publishing
worker) and unpacked by every subscribed worker. The bus itself adds the
stream position (sequence number and epoch); this module never sees Redis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack


class Envelope(NamedTuple):  # a NamedTuple, not a dataclass: two are made per message (cheaper to build)
    ts_ms: int  # server time the publishing worker accepted the message
    sender: str  # connection id (or user id once authenticated) of the publisher
    data_key: str  # "text", "payload" or "data"
    data: Any


def pack(envelope: Envelope) -> bytes:
    return msgpack.packb(
        (envelope.ts_ms, envelope.sender, envelope.data_key, envelope.data), use_bin_type=True
    )


def unpack(body: bytes) -> Envelope:
    """Raises ValueError on a body no ringcast worker could have written."""
    try:
        ts_ms, sender, data_key, data = msgpack.unpackb(body, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"bad envelope: {exc}") from None
    return Envelope(ts_ms, sender, data_key, data)
