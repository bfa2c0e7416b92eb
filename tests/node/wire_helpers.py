"""Shared test helpers for what goes over the wire: a reference parser of server frames and a
hypothesis strategy of JSON values (used by the protocol, frames, envelope and hub tests)."""

from __future__ import annotations

import struct

from hypothesis import strategies as st


def parse_server_frame(data: bytes) -> tuple[bool, int, bytes, bytes]:
    """A tiny reference parser (RFC 6455 5.2): (fin, opcode, payload, rest)."""
    first, second = data[0], data[1]
    assert second & 0x80 == 0, "server frames are never masked"
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack("!H", data[2:4]), 4
        assert length >= 126, "minimal encoding"
    elif length == 127:
        (length,), offset = struct.unpack("!Q", data[2:10]), 10
        assert length >= 65536, "minimal encoding"
    assert len(data) >= offset + length, "truncated frame"
    return bool(first & 0x80), first & 0x0F, data[offset:offset + length], data[offset + length:]


def split_server_frames(stream: bytes) -> list[tuple[int, bytes]]:
    """Every (opcode, payload) in a byte stream of whole server frames; each must be final (FIN)."""
    found = []
    while stream:
        fin, opcode, payload, stream = parse_server_frame(stream)
        assert fin, "server frames are never fragmented"
        found.append((opcode, payload))
    return found


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
