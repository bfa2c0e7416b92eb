"""Unit tests of node/frames.py: whole server WebSocket frames as bytes (RFC 6455).

Every frame the server builds is checked against a small reference parser
(tests/node/wire_helpers.py): header length at each size boundary, opcode,
FIN, no mask, and control frames within 125 bytes.
"""

from __future__ import annotations

import struct

import pytest

from node import frames
from tests.node.wire_helpers import parse_server_frame


@pytest.mark.parametrize("size,header", [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)])
def test_frame_headers_at_length_boundaries(size, header):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for binary, opcode in ((False, frames.OP_TEXT), (True, frames.OP_BINARY)):
        built = frames.data_frame(payload, binary)
        assert len(built) == header + size
        assert parse_server_frame(built) == (True, opcode, payload, b"")


def test_frames_written_back_to_back_parse_apart():
    stream = frames.data_frame(b"a" * 200, False) + frames.PING + frames.data_frame(b"b", True)
    fin, op1, p1, rest = parse_server_frame(stream)
    _, op2, p2, rest = parse_server_frame(rest)
    _, op3, p3, rest = parse_server_frame(rest)
    assert (op1, p1, op2, p2, op3, p3, rest) == (frames.OP_TEXT, b"a" * 200, frames.OP_PING, b"", frames.OP_BINARY, b"b", b"")


def test_close_and_pong_frames_fit_a_control_frame():
    _, opcode, payload, _ = parse_server_frame(frames.close_frame(1009, "é" * 200))
    assert opcode == frames.OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1009 and len(payload) <= 125
    _, opcode, payload, _ = parse_server_frame(frames.pong(b"z" * 300))
    assert opcode == frames.OP_PONG and payload == b"z" * 125
