"""Unit and property tests of node/protocol.py: client frames in, server frames out.

No processes, no sockets: the module takes values and returns values, so it
is tested exhaustively here, and the decoder is fuzzed with hypothesis (it
must answer every input with a value or a ProtocolError, nothing else).
"""

from __future__ import annotations

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from node import protocol
from node.protocol import ErrorCode, ProtocolError
from tests.node.wire_helpers import json_values

LIMITS = protocol.ProtocolLimits(max_room_name_chars=16, max_json_depth=4, max_frame_bytes=4096)
DECODER = protocol.Decoder(LIMITS)
CODECS = (protocol.JSON, protocol.MSGPACK)


def wire(obj, codec: str) -> str | bytes:
    """A client frame as the worker hands it to the decoder: str for JSON, bytes for msgpack."""
    if codec == protocol.JSON:
        return orjson.dumps(obj).decode()
    return msgpack.packb(obj, use_bin_type=True)


def decode(obj, codec: str = protocol.JSON):
    return DECODER.decode(wire(obj, codec), codec)


def refused(obj, codec: str = protocol.JSON) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(obj, codec)
    return info.value


# --- every client frame type -----------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_every_client_frame_type_decodes(codec):
    assert decode({"type": "join", "room": "general"}, codec) == protocol.Join("general")
    assert decode({"type": "join", "room": "r", "id": 7, "since": {"seq": 3, "epoch": "e1"}}, codec) == protocol.Join(
        "r", 7, protocol.Since(3, "e1")
    )
    assert decode({"type": "leave", "room": "general", "id": "a"}, codec) == protocol.Leave("general", "a")
    assert decode({"type": "ping"}, codec) == protocol.Ping()
    assert decode({"type": "ping", "id": "p1"}, codec) == protocol.Ping("p1")
    assert decode({"type": "history", "room": "r", "limit": 5}, codec) == protocol.History("r", None, 5)
    assert decode({"type": "message", "room": "r", "text": "hi", "id": 1}, codec) == protocol.Publish("r", "text", "hi", 1)


def test_the_tutorial_message_needs_no_room():
    """`{"type":"message","text":...}` is accepted as-is; the worker picks the one joined room."""
    frame = decode({"type": "message", "text": "Load test message"})
    assert frame == protocol.Publish(None, "text", "Load test message")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("key,value", [("text", "hé\u2028\x00"), ("payload", {"a": [1, 2.5, None, True]}), ("data", [1, "x"])])
def test_the_data_comes_back_in_the_key_it_came_in(codec, key, value):
    frame = decode({"type": "message", "room": "r", key: value}, codec)
    assert (frame.data_key, frame.data) == (key, value)


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "message", "room": "r"},  # no data at all
        {"type": "message", "room": "r", "text": "a", "data": 1},  # two data keys
        {"type": "message", "room": "r", "text": "a", "payload": 1, "data": 2},
        {"type": "message", "room": "r", "text": 5},  # text must be a string
        {"type": "message", "room": "r", "text": None},
    ],
)
def test_a_message_carries_exactly_one_data_key_and_text_is_a_string(obj):
    assert refused(obj).code is ErrorCode.INVALID_MESSAGE_FORMAT


# --- error code paths -------------------------------------------------------------------

def test_frames_that_are_not_objects_or_lack_a_string_type():
    for obj in ([], 1, "join", None, {}, {"type": 1}, {"type": None}, {"type": ["join"]}, {"room": "r"}):
        for codec in CODECS:
            assert refused(obj, codec).code is ErrorCode.INVALID_MESSAGE_FORMAT, (obj, codec)


def test_invalid_json_and_invalid_msgpack():
    for text in ("", "{", "{'type':'ping'}", '{"type":"ping"} x', "nul", "\ud800"):
        with pytest.raises(ProtocolError) as info:
            DECODER.decode(text, protocol.JSON)
        assert info.value.code is ErrorCode.INVALID_MESSAGE_FORMAT, text
    for data in (b"", b"\xc1", b"\x81", msgpack.packb({"type": "ping"}) + b"\x00", b"\xa3\xff\xfe\xfd"):
        with pytest.raises(ProtocolError) as info:
            DECODER.decode(data, protocol.MSGPACK)
        assert info.value.code is ErrorCode.INVALID_MESSAGE_FORMAT, data


def test_a_frame_of_the_other_codec_is_wrong_frame_type():
    with pytest.raises(ProtocolError) as info:
        DECODER.decode(b'{"type":"ping"}', protocol.JSON)
    assert info.value.code is ErrorCode.WRONG_FRAME_TYPE
    with pytest.raises(ProtocolError) as info:
        DECODER.decode('{"type":"ping"}', protocol.MSGPACK)
    assert info.value.code is ErrorCode.WRONG_FRAME_TYPE


def test_unknown_type_keeps_the_request_id_and_bounds_the_echoed_name():
    error = refused({"type": "x" * 1000, "id": "q"})
    assert error.code is ErrorCode.UNKNOWN_TYPE and error.request_id == "q"
    assert len(error.message) < 100


def test_msgpack_bin_and_ext_are_refused_even_when_empty():
    """Binary values cannot be delivered to JSON members; an empty one is no exception."""
    codec = protocol.MSGPACK
    for value in (b"x", b"", msgpack.ExtType(5, b"abc"), msgpack.ExtType(5, b""), {"k": b""}, [b""]):
        with pytest.raises(ProtocolError) as info:
            DECODER.decode(msgpack.packb({"type": "message", "room": "r", "data": value}, use_bin_type=True), codec)
        assert info.value.code is ErrorCode.INVALID_MESSAGE_FORMAT, value
    for key in (b"", b"k", 1):
        with pytest.raises(ProtocolError) as info:
            DECODER.decode(msgpack.packb({"type": "message", "room": "r", "data": {key: 1}}, use_bin_type=True), codec)
        assert info.value.code is ErrorCode.INVALID_MESSAGE_FORMAT, key


def test_data_nested_deeper_than_the_limit_is_refused_in_both_codecs():
    shallow = [[["x"]]]  # depth 3
    deep = {"a": [[[["x"]]]]}  # depth 5 > 4
    for codec in CODECS:
        assert decode({"type": "message", "room": "r", "data": shallow}, codec).data == shallow
        assert refused({"type": "message", "room": "r", "data": deep}, codec).code is ErrorCode.INVALID_MESSAGE_FORMAT
    assert protocol.nesting_depth({"a": [{"b": []}]}, 100) == 4
    assert protocol.nesting_depth([], 100) == 1


def test_since_and_limit_rules():
    for since in (1, "x", [], {"seq": -1}, {"seq": "1"}, {"seq": True}, {"seq": 1, "epoch": 5},
                  {"seq": 1, "epoch": "e" * 65}, {"seq": 2**63}):
        assert refused({"type": "join", "room": "r", "since": since}).code is ErrorCode.INVALID_MESSAGE_FORMAT, since
    assert decode({"type": "join", "room": "r", "since": {"seq": 0}}).since == protocol.Since(0, "")
    for limit in (0, -1, "5", True, 1.5):
        assert refused({"type": "history", "room": "r", "limit": limit}).code is ErrorCode.INVALID_MESSAGE_FORMAT


# --- room names ---------------------------------------------------------------------------

@pytest.mark.parametrize("room", ["general", "a", "A-Z_0.9:@/#=+", "x" * 16])
def test_valid_room_names(room):
    assert decode({"type": "join", "room": room}).room == room
    assert DECODER.room(room) == room


@pytest.mark.parametrize("room", ["", "x" * 17, "has space", "é", "a\nb", "semi;colon", "a*b", "q?x", None, 5, ["r"], {"r": 1}])
def test_invalid_room_names(room):
    for kind in ("join", "leave", "history"):
        error = refused({"type": kind, "room": room, "id": 9})
        assert (error.code, error.request_id) == (ErrorCode.INVALID_ROOM, 9), (kind, room)
    if room is not None:  # on a message, a null room means "the one I joined"
        assert refused({"type": "message", "room": room, "text": "t"}).code is ErrorCode.INVALID_ROOM


def test_missing_room_on_join_is_invalid_room():
    assert refused({"type": "join"}).code is ErrorCode.INVALID_ROOM


# --- request ids --------------------------------------------------------------------------

@pytest.mark.parametrize("request_id", ["", "x" * 64, 0, -(2**53), 2**53])
def test_valid_request_ids_are_echoed(request_id):
    assert decode({"type": "ping", "id": request_id}).request_id == request_id


@pytest.mark.parametrize("request_id", ["x" * 65, 2**53 + 1, -(2**53) - 1, True, 1.5, [], {}])
def test_invalid_request_ids(request_id):
    error = refused({"type": "ping", "id": request_id})
    assert error.code is ErrorCode.INVALID_MESSAGE_FORMAT and error.request_id is None


def test_an_error_after_a_valid_id_carries_it():
    assert refused({"type": 5, "id": "mine"}).request_id == "mine"


# --- server frames ---------------------------------------------------------------------------

def test_server_frames_encode_in_both_codecs():
    frame = protocol.error(ErrorCode.RATE_LIMIT_EXCEEDED, "slow down", "r1", 0.12345)
    assert frame == {"type": "error", "code": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryAfter": 0.123, "id": "r1"}
    assert orjson.loads(protocol.encode(frame, protocol.JSON)) == frame
    assert msgpack.unpackb(protocol.encode(frame, protocol.MSGPACK)) == frame
    assert "id" not in protocol.pong(5) and protocol.pong(5, 0)["id"] == 0
    assert protocol.reconnect("shutdown", 12.7) == {"type": "reconnect", "reason": "shutdown", "delayMs": 12}
    assert protocol.message("r", 3, "e", 99, "c1", "text", "hi")["text"] == "hi"
    assert protocol.joined("r", 0, "")["type"] == "joined" and "recovered" not in protocol.joined("r", 0, "")


# --- property tests of the decoder -------------------------------------------------------------

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats() | st.text()
    | st.binary(max_size=4) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=2) | st.integers(-(2**63), 2**64 - 1), children, max_size=4),
    max_leaves=20,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["join", "leave", "message", "ping", "history", "nope"])},
    optional={
        "room": st.text(max_size=20) | st.integers(-(2**63), 2**64 - 1),
        "id": st.text(max_size=70) | st.integers(-(2**63), 2**64 - 1) | st.booleans(),
        "text": json_values, "payload": json_values, "data": json_values,
        "since": json_values | st.fixed_dictionaries({"seq": st.integers(-(2**63), 2**64 - 1), "epoch": st.text(max_size=70)}),
        "limit": json_values,
    },
)


def _decode_or_protocol_error(frame, codec):
    try:
        return DECODER.decode(frame, codec)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode) and exc.message
        return None


@given(st.binary(max_size=256))
def test_arbitrary_bytes_only_ever_give_protocol_errors(data):
    _decode_or_protocol_error(data, protocol.MSGPACK)
    _decode_or_protocol_error(data, protocol.JSON)


@given(st.text(max_size=256))
def test_arbitrary_text_only_ever_gives_protocol_errors(text):
    _decode_or_protocol_error(text, protocol.JSON)
    _decode_or_protocol_error(text, protocol.MSGPACK)


@given(json_values | frame_like)
def test_arbitrary_json_values_only_ever_give_protocol_errors(value):
    _decode_or_protocol_error(orjson.dumps(value).decode(), protocol.JSON)


@hsettings(suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values | frame_like)
def test_arbitrary_msgpack_values_only_ever_give_protocol_errors(value):
    decoded = _decode_or_protocol_error(msgpack.packb(value, use_bin_type=True), protocol.MSGPACK)
    if isinstance(decoded, protocol.Publish):
        # What the decoder accepts must be deliverable to JSON members too.
        orjson.dumps(decoded.data)


room_names = st.text(alphabet="ABCxyz019_-.:@/#=+", min_size=1, max_size=16)
request_ids = st.none() | st.text(max_size=64) | st.integers(min_value=-(2**53), max_value=2**53)
valid_frames = st.one_of(
    st.builds(protocol.Join, room_names, request_ids),
    st.builds(protocol.Leave, room_names, request_ids),
    st.builds(protocol.Ping, request_ids),
    st.builds(
        protocol.Publish, st.none() | room_names, st.sampled_from(["payload", "data"]),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=10,
        ),
        request_ids,
        st.none(),  # no idempotency key (as_wire_object writes none)
    ),
    st.builds(protocol.Publish, st.none() | room_names, st.just("text"), st.text(max_size=50), request_ids, st.none()),
)


def as_wire_object(frame: protocol.ClientFrame) -> dict:
    kind = {protocol.Join: "join", protocol.Leave: "leave", protocol.Ping: "ping", protocol.Publish: "message"}[type(frame)]
    obj: dict = {"type": kind}
    if frame.request_id is not None:
        obj["id"] = frame.request_id
    if isinstance(frame, protocol.Publish):
        obj[frame.data_key] = frame.data
        if frame.room is not None:
            obj["room"] = frame.room
    elif not isinstance(frame, protocol.Ping):
        obj["room"] = frame.room
    return obj


@given(valid_frames, st.sampled_from(CODECS))
def test_valid_frames_round_trip(frame, codec):
    assert DECODER.decode(wire(as_wire_object(frame), codec), codec) == frame


# --- stream positions the Redis bus can write exactly ------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_since_seq_and_limit_stop_where_lua_would_write_exponents(codec):
    """Lua 5.1 writes 10**14 as `1e+14`, not a stream ID: `since.seq + 1` must stay below it."""
    assert protocol.MAX_SEQ + 1 < 10**14 < 2**53
    top = decode({"type": "join", "room": "r", "since": {"seq": protocol.MAX_SEQ, "epoch": "e"}}, codec)
    assert top.since == protocol.Since(protocol.MAX_SEQ, "e")
    assert decode({"type": "history", "room": "r", "limit": protocol.MAX_SEQ}, codec).limit == protocol.MAX_SEQ
    for seq in (protocol.MAX_SEQ + 1, 10**14, 2**53, 2**63 - 1):
        for kind in ("join", "history"):
            error = refused({"type": kind, "room": "r", "since": {"seq": seq, "epoch": "e"}, "id": 9}, codec)
            assert (error.code, error.request_id) == (ErrorCode.INVALID_MESSAGE_FORMAT, 9), (kind, seq)
            assert str(protocol.MAX_SEQ) in error.message
    error = refused({"type": "history", "room": "r", "limit": protocol.MAX_SEQ + 1}, codec)
    assert error.code is ErrorCode.INVALID_MESSAGE_FORMAT and str(protocol.MAX_SEQ) in error.message
