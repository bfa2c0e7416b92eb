"""node.ws_handshake without a socket: reading a request head, the upgrade checks with their HTTP status,
the subprotocol choice and the 101 and refusal answers."""

from __future__ import annotations

import base64

import pytest

from node.ws_handshake import HandshakeError, RequestHead, accept_key, check_upgrade, choose_subprotocol, http_answer, parse_head, switching_protocols

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's sample nonce
UPGRADE_HEADERS = {
    "Host": "server.example.com",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def head_bytes(request_line: str = "GET /ws HTTP/1.1", headers: dict[str, str] | None = None, extra: list[str] = ()) -> bytes:
    lines = [request_line] + [f"{name}: {value}" for name, value in (UPGRADE_HEADERS if headers is None else headers).items()]
    return "\r\n".join(lines + list(extra)).encode("latin-1")


def upgrade(**changes: str | None) -> RequestHead:
    """A parsed upgrade head with some headers changed (None removes one)."""
    headers = dict(UPGRADE_HEADERS)
    for name, value in changes.items():
        name = name.replace("_", "-")
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    return parse_head(head_bytes(headers=headers), 8190)


def status_of(head: RequestHead) -> int:
    with pytest.raises(HandshakeError) as caught:
        check_upgrade(head)
    return caught.value.status


# --- parse_head -------------------------------------------------------------------------------

def test_parse_head_reads_the_request_line_query_and_headers_in_order():
    head = parse_head(head_bytes("GET /ws?token=abc&x=%20y HTTP/1.1", extra=["X-Forwarded-For:  1.2.3.4 ",
                                                                         "x-forwarded-for: 5.6.7.8", "Empty:"]), 8190)
    assert (head.method, head.path, head.query) == ("GET", "/ws", "token=abc&x=%20y")
    assert head.query_param("token") == "abc" and head.query_param("x") == " y" and head.query_param("nope") is None
    assert head.get("sec-websocket-key") == KEY  # names lower-cased
    assert head.getall("x-forwarded-for") == ["1.2.3.4", "5.6.7.8"]  # values stripped, order kept
    assert head.get("empty") == "" and head.get("missing") is None
    assert parse_head(b"GET /ws HTTP/1.1", 100).headers == []
    assert parse_head(b"GET /ws HTTP/1.1", 100).query_param("token") is None


def test_a_line_longer_than_the_limit_is_400_and_one_at_the_limit_is_read():
    line = "X-Pad: " + "a" * 93  # 100 characters
    assert parse_head(head_bytes(extra=[line]), 100).get("x-pad") == "a" * 93
    for head in (head_bytes(extra=[line + "a"]), head_bytes("GET /ws?" + "q" * 100 + " HTTP/1.1")):
        with pytest.raises(HandshakeError) as caught:
            parse_head(head, 100)
        assert caught.value.status == 400


@pytest.mark.parametrize("head", [
    b"",
    b"GET /ws",
    b"GET  /ws HTTP/1.1",
    b"GET /ws HTTP/1.1 extra",
    b"GET /ws HTTP/1.0",
    b"GET /ws HTTP/2",
    b"GET /ws HTTP/1.1\r\nno colon here",
    b"GET /ws HTTP/1.1\r\n: no name",
    b"GET /ws HTTP/1.1\r\nBad Name: x",
    b"GET /ws HTTP/1.1\r\n Folded: x",
    b"GET /ws HTTP/1.1\r\nName : x",
    b"GET /ws HTTP/1.1\r\nTab\t: x",
    b"GET /ws HTTP/1.1\r\nHost: x\r\n",  # an empty line inside the head
])
def test_malformed_request_and_header_lines_are_400(head):
    with pytest.raises(HandshakeError) as caught:
        parse_head(head, 8190)
    assert caught.value.status == 400


# --- check_upgrade ---------------------------------------------------------------------------

def test_a_well_formed_upgrade_passes_with_any_case_and_extra_tokens():
    check_upgrade(upgrade())
    check_upgrade(upgrade(Upgrade="WebSocket", Connection="keep-alive, Upgrade"))
    check_upgrade(upgrade(Upgrade="h2c, websocket", Connection="UPGRADE,keep-alive"))


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "get"])
def test_an_upgrade_that_is_not_a_get_is_405(method):
    assert status_of(parse_head(head_bytes(f"{method} /ws HTTP/1.1"), 8190)) == 405


@pytest.mark.parametrize("changes", [
    {"Upgrade": None},
    {"Upgrade": "h2c"},
    {"Upgrade": "websocket2"},
    {"Connection": None},
    {"Connection": "keep-alive"},
    {"Connection": "keep-alive, Upgraded"},
])
def test_a_missing_upgrade_or_connection_token_is_400(changes):
    assert status_of(upgrade(**changes)) == 400


@pytest.mark.parametrize("version", [None, "12", "8", "13, 8", " "])
def test_a_version_other_than_13_is_426(version):
    assert status_of(upgrade(Sec_WebSocket_Version=version)) == 426


@pytest.mark.parametrize("key", [
    None,
    "",
    "not base64!",
    base64.b64encode(b"x" * 15).decode(),
    base64.b64encode(b"x" * 17).decode(),
    KEY.rstrip("="),  # unpadded
])
def test_a_missing_or_bad_key_is_400(key):
    assert status_of(upgrade(Sec_WebSocket_Key=key)) == 400


# --- subprotocol, answers ----------------------------------------------------------------------

SUPPORTED = ("ringcast.json", "ringcast.msgpack")


def offered(*values: str) -> RequestHead:
    return parse_head(head_bytes(extra=[f"Sec-WebSocket-Protocol: {value}" for value in values]), 8190)


def test_the_subprotocol_is_the_first_the_client_offers_that_the_server_speaks():
    assert choose_subprotocol(offered(), SUPPORTED) is None
    assert choose_subprotocol(offered("chat, superchat"), SUPPORTED) is None
    assert choose_subprotocol(offered("ringcast.msgpack"), SUPPORTED) == "ringcast.msgpack"
    assert choose_subprotocol(offered("ringcast.msgpack, ringcast.json"), SUPPORTED) == "ringcast.msgpack"
    assert choose_subprotocol(offered("ringcast.json,ringcast.msgpack"), SUPPORTED) == "ringcast.json"
    assert choose_subprotocol(offered("chat,  ringcast.msgpack "), SUPPORTED) == "ringcast.msgpack"
    # repeated headers are one list, in the order they were sent
    assert choose_subprotocol(offered("chat", "ringcast.msgpack", "ringcast.json"), SUPPORTED) == "ringcast.msgpack"
    assert choose_subprotocol(offered("RINGCAST.JSON"), SUPPORTED) is None  # tokens are case-sensitive


def test_the_accept_key_of_the_rfc_sample():
    # RFC 6455 section 1.3: this key gives "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_101_carries_the_accept_key_and_the_chosen_subprotocol_only():
    answer = switching_protocols(upgrade(), None)
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and answer.endswith(b"\r\n\r\n")
    lines = answer.decode().split("\r\n")
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in lines
    assert "Upgrade: websocket" in lines and "Connection: Upgrade" in lines
    assert not [line for line in lines if line.lower().startswith("sec-websocket-protocol")]
    assert "Sec-WebSocket-Protocol: ringcast.msgpack" in switching_protocols(upgrade(), "ringcast.msgpack").decode().split("\r\n")


def test_a_refusal_is_a_whole_answer_that_closes_the_connection():
    body = b'{"error": "ORIGIN_NOT_ALLOWED"}'
    answer = http_answer(403, body, {"Retry-After": "3"})
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 403 Forbidden"
    assert {"Connection: close", f"Content-Length: {len(body)}", "Retry-After: 3"} <= set(lines)
    assert "Content-Type: application/json; charset=utf-8" in lines
    assert rest == body
