"""Admission before the upgrade: Origin allowlist, per-IP cap, accept rate, slow handshakes."""

from __future__ import annotations

import asyncio

from chaos.eventually import eventually
from chaos.rawws import RawWebSocket, UpgradeRefused
from node.admission import origin_allowed
from tests.security.bystanders import Bystanders


def test_origin_rules():
    allowed = ("https://app.example.com", "https://*.example.org")
    assert origin_allowed(None, allowed)  # not a browser
    assert origin_allowed("https://evil.test", ())  # empty list: any
    assert origin_allowed("HTTPS://APP.EXAMPLE.COM", allowed)
    assert origin_allowed("https://a.example.org", allowed)
    assert not origin_allowed("https://evil.test", allowed)
    assert not origin_allowed("https://app.example.com.evil.test", allowed)
    assert not origin_allowed("null", allowed)


async def _status(node, headers=None) -> tuple[int, dict, bytes]:
    try:
        ws = await RawWebSocket.connect(node.host, node.port, "/ws", headers)
    except UpgradeRefused as refused:
        return refused.answer.status, refused.answer.headers, refused.answer.body
    ws.close()
    return 101, ws.answer.headers, b""


async def test_a_browser_from_an_origin_not_on_the_list_gets_403(start_node):
    node = start_node(1, "--allowed-origins", "https://app.example.com")
    status, _, body = await _status(node, {"Origin": "https://evil.test"})
    assert status == 403 and b"ORIGIN_NOT_ALLOWED" in body
    assert (await _status(node, {"Origin": "https://app.example.com"}))[0] == 101
    assert (await _status(node))[0] == 101  # no Origin: not a browser


async def test_connections_past_the_per_ip_cap_get_429(start_node):
    node = start_node(1, "--max-connections-per-ip", "2")
    first = await RawWebSocket.connect(node.host, node.port)
    second = await RawWebSocket.connect(node.host, node.port)
    status, headers, body = await _status(node)
    assert status == 429 and b"TOO_MANY_CONNECTIONS_FROM_IP" in body and "retry-after" in headers
    first.close()
    second.close()


async def test_a_socket_flood_past_the_accept_rate_gets_503_and_bystanders_keep_their_messages(start_node):
    node = start_node(1, "--accept-rate-per-s", "0.2", "--accept-burst", "3")
    bystanders = await Bystanders.join(node.ws_url())  # spends 2 of the 3
    statuses = []
    retry_after = []
    for _ in range(40):
        status, headers, body = await _status(node)
        statuses.append(status)
        if status == 503:
            assert b"ACCEPT_RATE_EXCEEDED" in body
            retry_after.append(int(headers["retry-after"]))
        await bystanders.publish()
    assert statuses.count(503) > 0 and set(statuses) <= {101, 503}
    assert all(seconds >= 1 for seconds in retry_after)
    await bystanders.assert_all_received()
    await eventually(lambda: node.metric(0, "ringcast_connections_rejected_total", 'reason="ACCEPT_RATE_EXCEEDED"'),
                     equals=statuses.count(503), what="every 503 counted as ACCEPT_RATE_EXCEEDED")
    await bystanders.close()


async def test_a_half_sent_request_line_is_cut_after_the_handshake_timeout(start_node):
    node = start_node(1, "--handshake-timeout-s", "1")
    bystanders = await Bystanders.join(node.ws_url())
    reader, writer = await asyncio.open_connection(node.host, node.port)
    writer.write(b"GET /ws HTT")
    cut = asyncio.ensure_future(reader.read())  # b"" once the worker closes the socket
    while not cut.done():  # keep the bystanders talking while the socket hangs
        await bystanders.publish()
        await asyncio.wait({cut}, timeout=0.2)
        assert len(bystanders.sent) < 300, "the half-open socket was never cut"
    assert cut.result() == b""
    writer.close()
    await bystanders.assert_all_received()
    await bystanders.close()


async def test_a_request_dribbled_byte_by_byte_is_cut_before_it_completes(start_node):
    """Slowloris proper: bytes keep arriving, but the timer is not reset by them."""
    node = start_node(1, "--handshake-timeout-s", "1")
    request = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + b"X-Pad: y\r\n" * 30 + b"\r\n"
    )
    reader, writer = await asyncio.open_connection(node.host, node.port)
    sent = 0
    cut = asyncio.ensure_future(reader.read())
    while not cut.done() and sent < len(request):
        writer.write(request[sent:sent + 1])
        sent += 1
        await asyncio.wait({cut}, timeout=0.1)
    # At one byte per 0.1 s the request needs ~40 s; a 1 s timeout cuts it long before.
    assert cut.done() and cut.result() == b"" and sent < len(request)
    writer.close()


async def test_an_oversized_header_line_gets_400(start_node):
    node = start_node(1, "--max-http-header-bytes", "2048")
    status, _, _ = await _status(node, {"X-Big": "a" * 4096})
    assert status == 400
    assert (await _status(node, {"X-Small": "a" * 1024}))[0] == 101


# --- the decision itself, without a worker -------------------------------------------------

def _admission(**overrides):
    from node.admission import Admission
    from node.auth import TokenVerifier
    from tests.security.tokens import KEY1

    settings = dict(
        allowed_origins=("https://app.example.com",), max_connections_per_ip=1, accept_rate_per_s=1.0, accept_burst=2,
        verifier=TokenVerifier({KEY1[0]: KEY1[1].encode()}), now=0.0,
    )
    settings.update(overrides)
    return Admission(**settings)


def _check(admission, now=0.0, ip="1.2.3.4", origin=None, authorization=None):
    import time

    return admission.check(ip=ip, origin=origin, authorization=authorization, query_token=None,
                           now_monotonic=now, now_unix=time.time())


def test_checks_run_cheapest_first_and_a_refusal_says_how_long_to_wait():
    from node.admission import Admitted, Refusal
    from tests.security.tokens import bearer, token

    admission = _admission()
    good = bearer(token())["Authorization"]
    # Origin first: even an over-quota IP with a bad token hears 403.
    admission.opened("1.2.3.4")
    assert _check(admission, origin="https://evil.test").status == 403
    assert _check(admission, authorization=good).status == 429  # then the per-IP cap
    admission.closed("1.2.3.4")
    assert admission.connections_per_ip == {}  # the count does not leak entries
    assert _check(admission).status == 401  # a bad request spends no accept token (only its address's budget)...
    for _ in range(2):
        admitted = _check(admission, authorization=good)
        assert isinstance(admitted, Admitted) and admitted.identity.user == "alice"
    refused = _check(admission, authorization=good)  # ...so the burst of 2 went to the two admitted
    assert isinstance(refused, Refusal) and (refused.status, refused.retry_after_s) == (503, 1)
    assert isinstance(_check(admission, now=1.0, authorization=good), Admitted)  # one more per second


def test_retry_after_is_whole_seconds_rounded_up():
    admission = _admission(accept_rate_per_s=0.25, accept_burst=1, verifier=None)
    assert _check(admission).identity is None  # auth off: admitted without a token
    assert _check(admission, now=0.5).retry_after_s == 4  # 3.5 s until the next token
