"""The bus wire format (node/bus_wire.py): round trips, and malformed payloads refused with a reason."""

from __future__ import annotations

import pytest

from node import bus_wire
from node.bus_redis import PUBLISH_SCRIPT, READ_HISTORY_SCRIPT
from node.bus_wire import MalformedBusMessage, WireMessage


@pytest.mark.parametrize(
    "seq, epoch, body",
    [
        (1, "1718000000123456", b'{"t":"m"}'),
        (bus_wire.MAX_SEQ, "1718000000123456", b""),
        (42, "abc123", b"a body with  spaces \x00 and \xff bytes "),
        (7, "e" * bus_wire.MAX_EPOCH_BYTES, b" leading space"),
    ],
)
def test_round_trip(seq, epoch, body):
    payload = bus_wire.encode(seq, epoch, body)
    assert bus_wire.decode(payload) == WireMessage(seq, epoch, body)


def test_the_payload_is_seq_space_epoch_space_body():
    assert bus_wire.encode(12, "1718000000123456", b"x y") == b"12 1718000000123456 x y"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "separator"),
        (b"12", "separator"),
        (b"12 1718000000123456", "separator"),  # no body separator: not even an empty body
        (b" 1718000000123456 body", "seq"),  # empty seq
        (b"0 1718000000123456 body", "seq"),
        (b"012 1718000000123456 body", "seq"),
        (b"-1 1718000000123456 body", "seq"),
        (b"+1 1718000000123456 body", "seq"),
        (b"1_000 1718000000123456 body", "seq"),
        (b"\xd9\xa1 1718000000123456 body", "seq"),  # a non-ASCII digit
        (b"9223372036854775808 1718000000123456 body", "larger"),  # MAX_SEQ + 1
        (b"12345678901234567890 1718000000123456 body", "seq"),  # 20 digits
        (b"12  body", "epoch"),  # empty epoch
        (b"12 17180000-00 body", "epoch"),
        (b"12 \xc3\xa9poch body", "epoch"),
        (b"12 " + b"e" * (bus_wire.MAX_EPOCH_BYTES + 1) + b" body", "epoch"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(payload, reason):
    with pytest.raises(MalformedBusMessage, match=reason):
        bus_wire.decode(payload)


def test_malformed_is_a_value_error():
    assert issubclass(MalformedBusMessage, ValueError)


@pytest.mark.parametrize("seq, epoch", [(0, "1"), (-3, "1"), (bus_wire.MAX_SEQ + 1, "1"), (1, ""), (1, "a b"), (1, "é")])
def test_encode_refuses_what_decode_would_refuse(seq, epoch):
    with pytest.raises(ValueError):
        bus_wire.encode(seq, epoch, b"body")


def test_history_entry():
    assert bus_wire.decode_history_entry(b"17-0", [b"b", b"the body"]) == (17, b"the body")
    assert bus_wire.decode_history_entry(b"17-0", [b"x", b"b", b"b", b"body"]) == (17, b"body")


@pytest.mark.parametrize(
    "entry_id, fields, reason",
    [
        (b"17", [b"b", b"x"], "ID"),
        (b"17-1", [b"b", b"x"], "ID"),
        (b"0-0", [b"b", b"x"], "seq"),
        (b"x-0", [b"b", b"x"], "seq"),
        (b"17-0", [b"c", b"x"], "field"),
        (b"17-0", [b"b"], "field"),
        (b"17-0", [], "field"),
    ],
)
def test_malformed_history_entries_are_refused(entry_id, fields, reason):
    with pytest.raises(MalformedBusMessage, match=reason):
        bus_wire.decode_history_entry(entry_id, fields)


def test_the_scripts_are_built_from_the_format():
    """The Lua that writes the format comes from bus_wire, so the format is written down once."""
    assert bus_wire.lua_payload("seq", "epoch", "ARGV[2]") == "seq .. ' ' .. epoch .. ' ' .. ARGV[2]"
    assert f"redis.call('PUBLISH', channel, {bus_wire.lua_payload('seq', 'epoch', 'body')})" in PUBLISH_SCRIPT
    assert f"{bus_wire.lua_history_entry_id('seq')}, '{bus_wire.HISTORY_BODY_FIELD}', body" in PUBLISH_SCRIPT
    assert bus_wire.lua_history_entry_id("(since + 1)") in READ_HISTORY_SCRIPT
