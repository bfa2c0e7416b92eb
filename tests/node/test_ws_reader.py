"""node.ws_reader without a socket: frame lengths, split and batched feeds, fragments, unmasking and every
rule a client frame must follow, with the close code each broken rule carries."""

from __future__ import annotations

import random
import struct

import pytest

from chaos.rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, client_frame
from node.ws_reader import NO_STATUS, FrameError, FrameReader, unmask

LIMIT = 100_000


def reader(limit: int = LIMIT) -> FrameReader:
    return FrameReader(limit)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def error_of(feeds: list[bytes], limit: int = LIMIT) -> FrameError:
    """Feed `feeds` one after another into a new reader; the FrameError the last one raises."""
    r = reader(limit)
    for data in feeds[:-1]:
        r.feed(data)
    with pytest.raises(FrameError) as caught:
        r.feed(feeds[-1])
    return caught.value


# --- lengths, feeds --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_7_16_and_64_bit_lengths_are_read(size):
    payload = bytes(random.Random(size).randrange(256) for _ in range(min(size, 1000))) * (size // 1000 + 1)
    payload = payload[:size]
    frame = client_frame(OP_BINARY, payload)
    expected_len_byte = size if size < 126 else (126 if size < 65536 else 127)
    assert frame[1] & 0x7F == expected_len_byte
    assert reader().feed(frame) == [(OP_BINARY, payload)]


@pytest.mark.parametrize("size", [5, 300, 70_000])
def test_a_frame_fed_byte_by_byte_is_read_once_whole(size):
    payload = ("é" * size).encode()[:size * 2]
    frame = client_frame(OP_TEXT, payload)
    r = reader(len(payload))
    got = []
    step = 1 if size < 1000 else 997  # every header byte alone; the long payload in odd-sized pieces
    for i in range(0, 14):
        got += r.feed(frame[i:i + 1])
    for i in range(14, len(frame), step):
        got += r.feed(frame[i:i + step])
    assert got == [(OP_TEXT, payload.decode())]
    assert r.feed(b"") == []


def test_several_frames_in_one_feed_come_out_in_order():
    data = (client_frame(OP_TEXT, b"one") + client_frame(OP_PING, b"p") + client_frame(OP_BINARY, b"\x00\x01")
            + client_frame(OP_PONG, b"") + client_frame(OP_TEXT, b"x" * 200) + client_frame(OP_CLOSE, close_payload(1000)))
    assert reader().feed(data + client_frame(OP_TEXT, b"half")[:5]) == [
        (OP_TEXT, "one"), (OP_PING, b"p"), (OP_BINARY, b"\x00\x01"), (OP_PONG, b""), (OP_TEXT, "x" * 200), (OP_CLOSE, 1000),
    ]


def test_a_fragmented_text_is_reassembled_and_a_ping_between_fragments_comes_out_between():
    r = reader()
    text = "héllo wörld"
    raw = text.encode()
    # The split falls inside "é": only the whole message must be UTF-8.
    first = client_frame(OP_TEXT, raw[:2], fin=False)
    middle = client_frame(OP_CONT, raw[2:6], fin=False)
    last = client_frame(OP_CONT, raw[6:])
    assert r.feed(first) == []
    assert r.feed(middle + client_frame(OP_PING, b"between")) == [(OP_PING, b"between")]
    assert r.feed(last + client_frame(OP_TEXT, b"next")) == [(OP_TEXT, text), (OP_TEXT, "next")]
    # and a fragmented binary, with an empty last fragment
    assert r.feed(client_frame(OP_BINARY, b"\xff", fin=False) + client_frame(OP_CONT, b"")) == [(OP_BINARY, b"\xff")]


def test_a_close_without_payload_is_no_status_and_codes_from_3000_are_accepted():
    assert reader().feed(client_frame(OP_CLOSE, b"")) == [(OP_CLOSE, NO_STATUS)]
    for code in (1000, 1001, 1011, 3000, 4001, 4999):
        assert reader().feed(client_frame(OP_CLOSE, close_payload(code, "bye ✓".encode()))) == [(OP_CLOSE, code)]


def test_unmask_matches_a_naive_xor_for_every_size_up_to_300():
    rng = random.Random(6455)
    for size in range(301):
        payload = bytes(rng.randrange(256) for _ in range(size))
        mask = bytes(rng.randrange(256) for _ in range(4))
        assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload)), size
        assert reader().feed(client_frame(OP_BINARY, payload)) == [(OP_BINARY, payload)]


# --- every rule, with its code ---------------------------------------------------------------

@pytest.mark.parametrize("rsv", [1, 2, 4])
def test_reserved_bits_are_1002(rsv):
    assert error_of([client_frame(OP_TEXT, b"x", rsv=rsv)]).close_code == 1002


def test_an_unmasked_frame_is_1002():
    assert error_of([client_frame(OP_TEXT, b"x", masked=False)]).close_code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_data_and_control_opcodes_are_1002(opcode):
    assert error_of([client_frame(opcode, b"")]).close_code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_a_control_frame_longer_than_125_or_not_final_is_1002(opcode):
    assert error_of([client_frame(opcode, b"\x03\xe8" + b"x" * 124)]).close_code == 1002
    # refused from its header: the 126 payload bytes never need to arrive
    assert error_of([client_frame(opcode, b"\x03\xe8" + b"x" * 124)[:4]]).close_code == 1002
    assert error_of([client_frame(opcode, b"\x03\xe8", fin=False)]).close_code == 1002
    # at the limit it is read
    assert reader().feed(client_frame(opcode, b"\x03\xe8" + b"x" * 123))[0][0] == opcode


def test_a_continuation_without_a_message_to_continue_is_1002():
    assert error_of([client_frame(OP_CONT, b"x")]).close_code == 1002
    # nor after the fragmented message ended
    done = client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_CONT, b"b")
    assert error_of([done, client_frame(OP_CONT, b"c")]).close_code == 1002


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_a_new_message_while_one_is_fragmented_is_1002(opcode):
    assert error_of([client_frame(OP_TEXT, b"a", fin=False), client_frame(opcode, b"b")]).close_code == 1002


@pytest.mark.parametrize("claimed", [1001, 70_000, 2 ** 40])
def test_a_frame_over_the_limit_is_1009_from_its_header_alone(claimed):
    header = client_frame(OP_BINARY, b"", claimed_length=claimed)  # header and mask, no payload
    assert len(header) in (6, 8, 14)
    assert error_of([header], limit=1000).close_code == 1009
    # the length bytes alone are enough (the mask is not waited for)
    assert error_of([header[:len(header) - 4]], limit=1000).close_code == 1009


def test_a_frame_at_the_limit_is_read():
    assert reader(1000).feed(client_frame(OP_TEXT, b"x" * 1000)) == [(OP_TEXT, "x" * 1000)]


def test_a_message_over_the_limit_across_fragments_is_1009_from_the_header_of_the_fragment_that_passes_it():
    r = reader(1000)
    assert r.feed(client_frame(OP_TEXT, b"x" * 600, fin=False)) == []
    assert r.feed(client_frame(OP_CONT, b"x" * 400, fin=False)) == []  # 1000 in all: still fine
    with pytest.raises(FrameError) as caught:
        r.feed(client_frame(OP_CONT, b"", claimed_length=1)[:2])  # one byte more, header only
    assert caught.value.close_code == 1009
    # exactly the limit across fragments is read
    ok = reader(1000)
    ok.feed(client_frame(OP_TEXT, b"x" * 600, fin=False))
    assert ok.feed(client_frame(OP_CONT, b"x" * 400)) == [(OP_TEXT, "x" * 1000)]


def test_invalid_utf8_text_is_1007_whole_or_fragmented():
    assert error_of([client_frame(OP_TEXT, b"ok \xff")]).close_code == 1007
    assert error_of([client_frame(OP_TEXT, b"\xe9", fin=False), client_frame(OP_CONT, b"t\xe9")]).close_code == 1007
    # a binary message is never decoded
    assert reader().feed(client_frame(OP_BINARY, b"\xff")) == [(OP_BINARY, b"\xff")]


def test_a_one_byte_close_payload_is_1002():
    error = error_of([client_frame(OP_CLOSE, b"\x03")])
    # refused as a one-byte payload, not read as a (bad) close code
    assert (error.close_code, error.message) == (1002, "a close payload of one byte")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_codes_that_may_not_be_sent_are_1002(code):
    assert error_of([client_frame(OP_CLOSE, close_payload(code))]).close_code == 1002


def test_a_close_reason_that_is_not_utf8_is_1007():
    assert error_of([client_frame(OP_CLOSE, close_payload(1000, b"bad \xc3("))]).close_code == 1007


def test_messages_read_before_the_broken_frame_in_the_same_feed_are_in_the_error():
    data = (client_frame(OP_TEXT, b"first") + client_frame(OP_PING, b"p")
            + client_frame(OP_TEXT, b"frag", fin=False) + client_frame(OP_CONT, b"ment")
            + client_frame(OP_TEXT, b"x", rsv=4) + client_frame(OP_TEXT, b"never"))
    error = error_of([data])
    assert error.close_code == 1002
    assert error.messages == [(OP_TEXT, "first"), (OP_PING, b"p"), (OP_TEXT, "fragment")]
    # an error on a feed's first frame carries none, even after earlier feeds delivered some
    r = reader()
    assert r.feed(client_frame(OP_TEXT, b"earlier")) == [(OP_TEXT, "earlier")]
    with pytest.raises(FrameError) as caught:
        r.feed(client_frame(OP_TEXT, b"x", masked=False))
    assert caught.value.messages == []
