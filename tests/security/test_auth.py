"""Connection tokens: verification rules (pure) and what a real worker does with them."""

from __future__ import annotations

import time

import aiohttp
import jwt
import psutil
import pytest

from chaos.eventually import eventually
from chaos.rawws import RawWebSocket, UpgradeRefused
from node.auth import AuthError, TokenVerifier, parse_secrets, token_from
from tests.security.bystanders import Bystanders
from tests.security.tokens import KEY1, KEY2, bearer, flag, token
from tests.wsclient import WsClient

KEYS = {KEY1[0]: KEY1[1].encode(), KEY2[0]: KEY2[1].encode()}
NOW = 2_000_000_000.0  # the verifier's clock in the unit tests: time is a parameter, never the real clock


# --- the rules, without a worker ------------------------------------------------

def test_a_valid_token_gives_its_identity_and_scopes():
    identity = TokenVerifier(KEYS).verify(token(KEY2, sub="bob", rooms=["chat:*"], publish=["chat:general"], at=NOW), NOW)
    assert identity.user == "bob"
    assert identity.may_join("chat:random") and not identity.may_join("admin:x")
    assert identity.may_publish("chat:general") and not identity.may_publish("chat:random")
    assert identity.expires_at == NOW + 600


# Each case mints its token when the test runs (a lambda), at the verifier's clock NOW.
_BAD_TOKENS = [
    (lambda: token(exp_in_s=-5, at=NOW), "expired"),
    (lambda: token(KEY1, kid="k2", at=NOW), "signature"),  # signed with k1's secret, claims to be k2
    (lambda: token(kid="nope", at=NOW), "unknown key"),
    (lambda: token(kid=None, at=NOW), "no `kid`"),  # two keys configured: kid is required
    (lambda: "not.a.token", "malformed"),
    (lambda: jwt.encode({"sub": "a", "exp": int(NOW) + 60}, None, algorithm="none"), "algorithm"),
    (lambda: jwt.encode({"sub": "a", "exp": int(NOW) + 60}, KEY1[1] * 2, algorithm="HS512", headers={"kid": "k1"}),
     "algorithm"),
    (lambda: jwt.encode({"sub": "a"}, KEY1[1], algorithm="HS256", headers={"kid": "k1"}), "exp"),
    (lambda: jwt.encode({"sub": "a", "exp": float("inf")}, KEY1[1], algorithm="HS256", headers={"kid": "k1"}),
     "exp"),  # JSON `Infinity`: a token that would never expire
    (lambda: token(at=NOW, nbf="soon"), "nbf"),
    (lambda: token(at=NOW, iat=True), "iat"),
    (lambda: token(sub="", at=NOW), "sub"),
    (lambda: token(sub="a\nb", at=NOW), "control"),
    (lambda: token(rooms="chat:*", at=NOW), "rooms"),  # a string, not a list
    (lambda: token(publish=[1], at=NOW), "publish"),
]


@pytest.mark.parametrize("mint, why", _BAD_TOKENS, ids=[why for _, why in _BAD_TOKENS])
def test_bad_tokens_are_refused_with_a_reason(mint, why):
    with pytest.raises(AuthError, match=why):
        TokenVerifier(KEYS).verify(mint(), NOW)


def test_exp_is_judged_at_the_callers_clock_and_the_leeway_extends_it():
    expiring = token(at=NOW, exp_in_s=100)  # exp = NOW + 100
    assert TokenVerifier(KEYS).verify(expiring, NOW + 99).expires_at == NOW + 100
    with pytest.raises(AuthError, match="expired"):
        TokenVerifier(KEYS).verify(expiring, NOW + 100)
    forgiving = TokenVerifier(KEYS, leeway_s=30)
    # Expired by this clock, but within the skew it forgives: accepted, and the connection lives as long.
    assert forgiving.verify(expiring, NOW + 129).expires_at == NOW + 130
    with pytest.raises(AuthError, match="expired"):
        forgiving.verify(expiring, NOW + 130)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_from_the_future_is_refused_until_its_time_or_the_leeway_covers_it(claim):
    early = token(at=NOW, **{claim: int(NOW) + 30})
    with pytest.raises(AuthError, match=claim):
        TokenVerifier(KEYS).verify(early, NOW)
    with pytest.raises(AuthError, match=claim):
        TokenVerifier(KEYS, leeway_s=29).verify(early, NOW)
    assert TokenVerifier(KEYS).verify(early, NOW + 30).user == "alice"  # its time has come
    assert TokenVerifier(KEYS, leeway_s=30).verify(early, NOW).user == "alice"  # the issuer's clock runs ahead


def test_with_one_key_the_kid_may_be_left_out():
    verifier = TokenVerifier({KEY1[0]: KEY1[1].encode()})
    assert verifier.verify(token(KEY1, kid=None, at=NOW), NOW).user == "alice"


def test_absent_scopes_allow_nothing():
    identity = TokenVerifier(KEYS).verify(token(rooms=None, publish=None, at=NOW), NOW)
    assert not identity.may_join("a") and not identity.may_publish("a")


@pytest.mark.parametrize("sub", ["*", "a*", "?", "user[1]", "]"])
def test_a_sub_with_glob_characters_is_refused_so_issuer_templates_stay_literal(sub):
    """An issuer scoping `user:{sub}:*` would hand the user named `*` every user's rooms."""
    templated = token(sub=sub, rooms=[f"user:{sub}:*"], publish=[f"user:{sub}:*"], at=NOW)
    with pytest.raises(AuthError, match="glob"):
        TokenVerifier(KEYS).verify(templated, NOW)


def test_aud_and_iss_are_checked_only_when_configured_and_then_required():
    strict = TokenVerifier(KEYS, audience="ringcast", issuer="https://issuer.example")
    good = {"aud": "ringcast", "iss": "https://issuer.example"}
    assert strict.verify(token(at=NOW, **good), NOW).user == "alice"
    assert strict.verify(token(at=NOW, **dict(good, aud=["other", "ringcast"])), NOW).user == "alice"
    for claims, why in (
        (dict(good, aud="other"), "aud"), (dict(good, aud=["other"]), "aud"), ({"iss": good["iss"]}, "aud"),
        (dict(good, aud="ringcast-x"), "aud"), (dict(good, iss="https://evil.example"), "iss"), ({"aud": "ringcast"}, "iss"),
    ):
        with pytest.raises(AuthError, match=why):
            strict.verify(token(at=NOW, **claims), NOW)
    # Not configured: not checked, whatever the token says.
    assert TokenVerifier(KEYS).verify(token(at=NOW, aud="other", iss="anyone"), NOW).user == "alice"


def test_secrets_are_parsed_and_short_or_duplicate_ones_refused():
    assert parse_secrets([flag(KEY1), flag(KEY2)]) == KEYS
    for bad in (["k1=short"], ["nokid"], [flag(KEY1), flag(KEY1)], ["=" + KEY1[1]]):
        with pytest.raises(ValueError):
            parse_secrets(bad)


def test_the_header_wins_over_the_query_and_must_say_bearer():
    assert token_from("Bearer abc", "xyz") == "abc"
    assert token_from(None, "xyz") == "xyz"
    for header, query in (("Basic abc", None), (None, None), ("Bearer ", None), (None, "x" * 5000)):
        with pytest.raises(AuthError):
            token_from(header, query)


# --- a real worker ------------------------------------------------------------------

def _auth_node(start_node, *extra: str):
    return start_node(1, "--auth", "required", "--jwt-secret", flag(KEY1), "--jwt-secret", flag(KEY2), *extra)


async def _refused_status(node, headers=None, path="/ws") -> tuple[int, dict]:
    with pytest.raises(UpgradeRefused) as refused:
        await RawWebSocket.connect(node.host, node.port, path, headers)
    return refused.value.answer.status, refused.value.answer.headers


async def test_missing_malformed_expired_or_badly_signed_tokens_get_401_before_the_upgrade(start_node):
    node = _auth_node(start_node)
    cases = [
        ({}, "/ws"),
        (bearer("garbage"), "/ws"),
        (bearer(token(exp_in_s=-30)), "/ws"),
        (bearer(token(KEY1, kid="k2")), "/ws"),
        ({}, "/ws?token=" + token(exp_in_s=-30)),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "/ws"),
    ]
    for headers, path in cases:
        status, answer_headers = await _refused_status(node, headers, path)
        assert status == 401, (headers, path)
        assert answer_headers.get("www-authenticate", "").startswith("Bearer")
    await eventually(lambda: node.metric(0, "ringcast_connections_rejected_total", 'reason="UNAUTHORIZED"'),
                     equals=len(cases), what="every refusal counted as UNAUTHORIZED")


async def test_a_token_in_the_header_or_the_query_opens_the_socket_and_keys_rotate(start_node):
    node = _auth_node(start_node)
    for url, headers in (
        (node.ws_url(), bearer(token(KEY1))),
        (node.ws_url() + "?token=" + token(KEY1), {}),
        (node.ws_url(), bearer(token(KEY2))),  # the new key, while the old one still works
    ):
        client = await WsClient.connect(url, headers=headers)
        assert (await client.join("lobby"))["room"] == "lobby"
        await client.close()


async def test_join_history_and_publish_outside_the_scope_are_forbidden(start_node):
    node = _auth_node(start_node)
    alice = await WsClient.connect(
        node.ws_url(), headers=bearer(token(sub="alice", rooms=["chat:*", "news"], publish=["chat:*"]))
    )
    bob = await WsClient.connect(node.ws_url(), headers=bearer(token(sub="bob", rooms=["chat:*"], publish=[])))
    try:
        await alice.send({"type": "join", "room": "admin:ops", "id": 1})
        refused = await alice.expect("error")
        assert (refused["code"], refused["id"]) == ("FORBIDDEN", 1)
        await alice.send({"type": "history", "room": "admin:ops", "id": 2})
        assert (await alice.expect("error"))["code"] == "FORBIDDEN"

        await alice.join("news")
        await alice.send({"type": "message", "room": "news", "text": "hi", "id": 3})
        refused = await alice.expect("error")
        assert (refused["code"], refused["id"]) == ("FORBIDDEN", 3)

        await alice.join("chat:general")
        await bob.join("chat:general")
        await bob.send({"type": "message", "room": "chat:general", "text": "bob here", "id": 4})
        assert (await bob.expect("error"))["code"] == "FORBIDDEN"

        await alice.send({"type": "message", "room": "chat:general", "text": "hello", "id": 5})
        delivered = await bob.expect("message")
        # Members see the token's `sub`, not a connection id.
        assert (delivered["from"], delivered["text"]) == ("alice", "hello")
    finally:
        await alice.close()
        await bob.close()


async def test_secrets_from_the_environment_and_never_in_a_workers_command_line(start_node, monkeypatch):
    monkeypatch.setenv("RINGCAST_JWT_SECRETS", f"{flag(KEY1)},{flag(KEY2)}")
    node = start_node(2)
    for index in range(2):
        client = await WsClient.connect(node.ws_url(index), headers=bearer(token(KEY2)))
        await client.close()
        with pytest.raises(UpgradeRefused):
            await RawWebSocket.connect(node.host, node.port + index)
        cmdline = " ".join(psutil.Process(node.worker_pid(index)).cmdline())
        assert KEY1[1] not in cmdline and KEY2[1] not in cmdline


async def test_auth_off_is_said_loudly_at_start(start_node):
    node = start_node(1)
    client = await WsClient.connect(node.ws_url())  # no token needed
    await client.close()
    assert "AUTH IS OFF" in node.log()


async def test_a_token_given_to_a_worker_without_auth_is_ignored(start_node):
    node = start_node(1, "--auth", "off", "--jwt-secret", flag(KEY1))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(node.ws_url(), headers=bearer("garbage")) as ws:
            assert (await ws.receive_json())["type"] == "welcome"


async def test_a_connection_is_closed_4001_when_its_token_expires(start_node):
    node = _auth_node(start_node)
    bystanders = await Bystanders.join(node.ws_url(), headers=bearer(token(sub="carol")))
    short = await WsClient.connect(node.ws_url(), headers=bearer(token(sub="dave", exp_in_s=3)))
    await short.join("lobby")
    while not short.ws.closed:
        await bystanders.publish()
        msg = await short.ws.receive(timeout=20)
    assert short.ws.close_code == 4001 and msg.extra == "token expired"
    await short.close()
    await bystanders.assert_all_received()  # carol's token is long-lived: she stays
    await bystanders.close()


async def test_the_leeway_forgives_clock_skew_at_the_upgrade_and_while_connected(start_node):
    """Timing-free: every margin is 30 s or more, and the sweep's own ping shows it judged the connection."""
    node = _auth_node(start_node, "--jwt-leeway-s", "60", "--heartbeat-interval-s", "0.2")
    now = int(time.time())
    for too_far in (token(nbf=now + 120), token(exp_in_s=-120)):  # beyond the 60 s leeway
        assert (await _refused_status(node, bearer(too_far)))[0] == 401
    async with aiohttp.ClientSession() as session:
        for skewed in (token(nbf=now + 30), token(exp_in_s=-5)):  # not valid yet / expired, both within the leeway
            async with session.ws_connect(node.ws_url(), headers=bearer(skewed), autoping=False) as ws:
                assert (await ws.receive_json(timeout=10))["type"] == "welcome"
                # The sweep checks expiry before it pings a connection: its ping means it kept this one (no 4001).
                msg = await ws.receive(timeout=10)
                assert msg.type is aiohttp.WSMsgType.PING, (msg.type, msg.data, msg.extra)
