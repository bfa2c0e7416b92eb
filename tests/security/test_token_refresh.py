"""Refreshing a connection's token in place (`refresh` frame), against real workers with --jwt-secret.

The worker verifies the new token like one at the upgrade, requires the same
`sub` and that every joined room stays within the new `rooms`; a refused
refresh leaves the connection on its old token (closed 4001 when it expires),
and one whose token does not verify is charged to the address's
refused-upgrade budget, like a 401.
"""

from __future__ import annotations

import time

import aiohttp
import pytest

from chaos.eventually import eventually
from chaos.rawws import RawWebSocket, UpgradeRefused
from router.client_core import token_expiry
from tests.security.tokens import KEY1, KEY2, bearer, flag, token
from tests.wsclient import WsClient


def _auth_node(start_node, *extra: str):
    return start_node(1, "--auth", "required", "--jwt-secret", flag(KEY1), *extra)


async def _refresh(client: WsClient, new_token: str, request_id: str) -> dict:
    await client.send({"type": "refresh", "token": new_token, "id": request_id})
    return await client.expect_any(("refreshed", "error"))


async def _echo(client: WsClient, room: str, text: str) -> None:
    """Publish to `room` and read the message back: the connection is alive and still in the room."""
    await client.send({"type": "message", "room": room, "text": text})
    frame = await client.expect("message")
    assert frame["text"] == text


async def test_a_refresh_replaces_the_token_and_the_connection_outlives_the_old_expiry(start_node):
    node = _auth_node(start_node)
    short = token(sub="alice", exp_in_s=3)
    client = await WsClient.connect(node.ws_url(), headers=bearer(short))
    try:
        await client.join("lobby")
        longer = token(sub="alice", exp_in_s=600)
        reply = await _refresh(client, longer, "r1")
        assert reply["type"] == "refreshed" and reply["id"] == "r1", reply
        assert reply["expiresAt"] == _exp(longer)
        # Past the old token's exp and two expiry sweeps (one a second) after it, the socket still serves its room.
        await eventually(lambda: time.time() > _exp(short) + 2.5, timeout_s=15, what="the old token's exp + 2 sweeps")
        await _echo(client, "lobby", "after the old exp")
        assert not client.ws.closed
        assert node.metric(0, "ringcast_connections_closed_total", 'reason="token_expired"') == 0
    finally:
        await client.close()


async def test_a_token_of_another_sub_is_refused_and_the_old_token_stays_until_it_expires(start_node):
    node = _auth_node(start_node)
    short = token(sub="alice", exp_in_s=3)
    client = await WsClient.connect(node.ws_url(), headers=bearer(short))
    try:
        await client.join("lobby")
        reply = await _refresh(client, token(sub="bob", exp_in_s=600), "r1")
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "TOKEN_SUBJECT_MISMATCH", "r1"), reply
        await _echo(client, "lobby", "still here")  # the connection was kept
        # ... on alice's old token: closed 4001 once it expires, not on bob's 10-minute one.
        while True:
            msg = await client.ws.receive(timeout=20)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert client.ws.close_code == 4001
    finally:
        await client.close()


async def test_a_token_that_loses_a_joined_room_is_refused_naming_it_and_the_old_scopes_stay(start_node):
    node = _auth_node(start_node)
    client = await WsClient.connect(node.ws_url(), headers=bearer(token(sub="alice", rooms=["chat:*"])))
    try:
        await client.join("chat:general")
        reply = await _refresh(client, token(sub="alice", rooms=["news"]), "r1")
        assert (reply["type"], reply["code"]) == ("error", "TOKEN_SCOPE_LOST"), reply
        assert "chat:general" in reply["message"]
        await _echo(client, "chat:general", "kept")
        # The old scopes still apply: `news` is not allowed yet.
        await client.send({"type": "join", "room": "news", "id": "j1"})
        assert (await client.expect("error"))["code"] == "FORBIDDEN"
        # A token that keeps the joined room and adds another is taken, and its scopes apply at once.
        reply = await _refresh(client, token(sub="alice", rooms=["chat:general", "news"]), "r2")
        assert reply["type"] == "refreshed", reply
        assert (await client.join("news"))["room"] == "news"
        await client.send({"type": "join", "room": "chat:other", "id": "j2"})
        assert (await client.expect("error"))["code"] == "FORBIDDEN"  # the new, narrower scope
    finally:
        await client.close()


async def test_invalid_refresh_tokens_are_refused_and_charged_to_the_addresss_refused_upgrade_budget(start_node):
    node = _auth_node(start_node, "--ip-refused-upgrade-burst", "3", "--ip-refused-upgrade-rate-per-s", "0.001")
    client = await WsClient.connect(node.ws_url(), headers=bearer(token(sub="alice")))
    try:
        await client.join("lobby")
        for n, bad in enumerate((token(KEY2, sub="alice"), token(sub="alice", exp_in_s=-30), "garbage")):
            reply = await _refresh(client, bad, f"r{n}")
            assert (reply["type"], reply["code"]) == ("error", "TOKEN_INVALID"), reply
        # The budget is spent: no more tokens are verified on this socket, even a good one ...
        reply = await _refresh(client, token(sub="alice"), "r9")
        assert (reply["type"], reply["code"]) == ("error", "RATE_LIMIT_EXCEEDED"), reply
        assert reply["retryAfter"] > 0
        # ... and a new upgrade from the address is refused like after three 401s.
        with pytest.raises(UpgradeRefused) as refused:
            await RawWebSocket.connect(node.host, node.port, "/ws", bearer(token(sub="alice")))
        assert refused.value.answer.status == 429
        await _echo(client, "lobby", "kept")  # the connection itself stays, on its old token
    finally:
        await client.close()
    await eventually(lambda: node.metric(0, "ringcast_errors_total", 'code="TOKEN_INVALID"'), equals=3,
                     what="three TOKEN_INVALID errors counted")


async def test_refresh_with_auth_off_answers_auth_disabled(start_node):
    node = start_node(1, "--auth", "off")
    client = await WsClient.connect(node.ws_url())
    try:
        reply = await _refresh(client, token(sub="alice"), "r1")
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "AUTH_DISABLED", "r1"), reply
        await client.send({"type": "ping", "id": 2})
        assert (await client.expect("pong"))["id"] == 2
    finally:
        await client.close()


def _exp(jwt_text: str) -> float:
    exp = token_expiry(jwt_text)
    assert exp is not None
    return exp
