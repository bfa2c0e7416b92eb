"""Unit and property tests of the pure modules of node/: protocol, frames, ratelimit, settings, envelope.

No processes, no sockets: these modules take values and return values, so
they are tested exhaustively here, and the decoder is fuzzed with hypothesis
(it must answer every input with a value or a ProtocolError, nothing else).
"""

from __future__ import annotations

import dataclasses
import struct

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from common import settings
from node import envelope, frames, protocol
from node.config import NodeConfig
from node.protocol import ErrorCode, ProtocolError
from node.ratelimit import TokenBucket, UserBuckets

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

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
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
    ),
    st.builds(protocol.Publish, st.none() | room_names, st.just("text"), st.text(max_size=50), request_ids),
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


# --- frames.py: server frame headers ------------------------------------------------------------

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
    return bool(first & 0x80), first & 0x0F, data[offset:offset + length], data[offset + length:]


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


# --- ratelimit.py ------------------------------------------------------------------------------

def test_token_bucket_allows_the_burst_then_refills_at_the_rate():
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token needs 1/2 s
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(1000.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refilled to the burst, not beyond


def test_user_buckets_are_shared_and_kept_after_the_last_connection_in_a_bounded_lru():
    users = UserBuckets(rate_per_s=1.0, burst=2, max_idle_users=1)
    first, second = users.acquire("alice", 0.0), users.acquire("alice", 0.0)
    assert first is second
    first.take(0.0), first.take(0.0)
    users.release("alice"), users.release("alice")
    assert users.acquire("alice", 0.0).take(0.0) > 0  # a reconnect does not refill
    users.release("alice")
    users.acquire("bob", 0.0), users.release("bob")  # evicts alice from the one idle slot
    assert len(users) == 1
    assert users.acquire("alice", 0.0).take(0.0) == 0.0
    users.release("nobody")  # harmless


# --- envelope.py -------------------------------------------------------------------------------

@given(st.integers(0, 2**63 - 1), st.text(max_size=20), st.sampled_from(protocol.DATA_KEYS), json_values)
def test_envelope_round_trips(ts_ms, sender, key, data):
    env = envelope.Envelope(ts_ms, sender, key, data)
    assert envelope.unpack(envelope.pack(env)) == env


@pytest.mark.parametrize("body", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb("x"), msgpack.packb([1, 2, 3, 4, 5])])
def test_bad_envelopes_raise_value_error(body):
    with pytest.raises(ValueError):
        envelope.unpack(body)


# --- settings.py ---------------------------------------------------------------------------------

def load(argv, environ=None):
    return settings.load(NodeConfig, argv, prog="t", description="t", section="node", environ=environ or {})


def test_precedence_flag_over_env_over_toml_over_default(tmp_path):
    path = tmp_path / "ringcast.toml"
    path.write_text('max_frame_bytes = 1000\nport = 9100\n[node]\nheartbeat_interval_s = 7.5\nmax_connections = 11\n')
    env = {"RINGCAST_MAX_FRAME_BYTES": "2000", "RINGCAST_MAX_CONNECTIONS": "22"}
    config = load(["--config", str(path), "--max-connections", "33"], env)
    assert config.max_connections == 33  # flag
    assert config.max_frame_bytes == 2000  # env over file
    assert config.port == 9100 and config.heartbeat_interval_s == 7.5  # file (top level and [node])
    assert config.max_rooms_per_connection == NodeConfig().max_rooms_per_connection  # default
    assert load([], {"RINGCAST_CONFIG": str(path)}).port == 9100  # the file named by the environment


def test_list_and_bool_settings_from_every_source(tmp_path):
    assert load(["--nodes", "a=127.0.0.1:1", "--nodes", "127.0.0.1:2"]).nodes == ["a=127.0.0.1:1", "127.0.0.1:2"]
    assert load([], {"RINGCAST_HISTORY_RULE": "chat:*=5:5, x:*=0:0"}).history_rule == ["chat:*=5:5", "x:*=0:0"]
    path = tmp_path / "c.toml"
    path.write_text('allowed_origins = ["https://a.example"]\n')
    assert load(["--config", str(path)]).allowed_origins == ["https://a.example"]


@pytest.mark.parametrize(
    "argv,environ",
    [
        (["--max-frame-bytes", "lots"], {}),
        ([], {"RINGCAST_MAX_FRAME_BYTES": "1.5"}),
        ([], {"RINGCAST_HEARTBEAT_INTERVAL_S": "soon"}),
        (["--max-connections", "0"], {}),
        (["--heartbeat-timeout-s", "-1"], {}),
        ([], {"RINGCAST_BUS": "kafka"}),
        (["--bus", "memory", "--workers", "2"], {}),
        (["--port", "65535", "--workers", "2"], {}),
    ],
)
def test_bad_values_exit_2_with_a_message(argv, environ, capsys):
    with pytest.raises(SystemExit) as info:
        load(argv, environ)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bad_toml_values_and_unknown_keys_are_refused(tmp_path, capsys):
    for text, word in (("max_frame_bytes = 1.5\n", "max_frame_bytes"), ("max_frame_byte = 1\n", "unknown"),
                       ("[node]\nheartbeat = 1\n", "heartbeat"), ("not toml =", "cannot read")):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(SystemExit):
            load(["--config", str(path)])
        assert word in capsys.readouterr().err, text
    with pytest.raises(SystemExit):
        load(["--config", str(tmp_path / "missing.toml")])


def test_help_documents_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit):
        load(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(NodeConfig):
        assert settings.flag_name(field.name) in text, field.name
        assert settings.env_name(field.name) in text, field.name
    assert "(default: 65536;" in text
