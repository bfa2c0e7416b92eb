"""Unit and property tests of node/envelope.py: the worker-to-worker message format on a channel."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, strategies as st

from node import envelope, protocol
from tests.node.wire_helpers import json_values


@given(st.integers(0, 2**63 - 1), st.text(max_size=20), st.sampled_from(protocol.DATA_KEYS), json_values)
def test_envelope_round_trips(ts_ms, sender, key, data):
    env = envelope.Envelope(ts_ms, sender, key, data)
    assert envelope.unpack(envelope.pack(env)) == env


@pytest.mark.parametrize("body", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb("x"), msgpack.packb([1, 2, 3, 4, 5])])
def test_bad_envelopes_raise_value_error(body):
    with pytest.raises(ValueError):
        envelope.unpack(body)


@pytest.mark.parametrize("body", [msgpack.packb(5), msgpack.packb(None), msgpack.packb(2.5)], ids=["int", "nil", "float"])
def test_bodies_that_are_not_sequences_raise_value_error_too(body):
    """msgpack answers these with a TypeError on unpacking; callers catch only ValueError."""
    with pytest.raises(ValueError):
        envelope.unpack(body)
