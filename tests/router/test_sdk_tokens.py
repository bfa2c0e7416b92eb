"""Tokens in the client SDK: the core's `refresh` frame and `token_expiry` (pure), and the SDK
(`router.client.Client`) against a real worker with --jwt-secret and a real Redis: refreshing a
5-second token in place, asking `get_token` again after a 401 or a 4001, and ending with
AuthenticationFailed when it has no way to renew a refused token."""

from __future__ import annotations

import asyncio
import time

import pytest

from chaos.eventually import eventually
from router.client import AuthenticationFailed, Client, ConnectionState, StateChange
from router.client_core import ClientCore, Reply, RequestFailed, token_expiry
from tests.client_helpers import FAST, next_message
from tests.security.tokens import KEY1, bearer, flag, token
from tests.wsclient import WsClient


# --- the core, no sockets -------------------------------------------------------------------------

def _connected_core() -> ClientCore:
    core = ClientCore()
    core.connection_opened("ws://127.0.0.1:1/ws")
    core.receive({"type": "welcome", "workerId": "w", "connectionId": "c"})
    core.frames_to_send()
    return core


def test_the_core_builds_the_refresh_frame_and_matches_refreshed_and_errors_by_id():
    core = _connected_core()
    request = core.refresh("a.b.c")
    assert core.frames_to_send() == [{"type": "refresh", "token": "a.b.c", "id": request.id}]
    [event] = core.receive({"type": "refreshed", "id": request.id, "expiresAt": 1_800_000_000})
    assert isinstance(event, Reply) and event.request is request
    failing = core.refresh("x.y.z")
    core.frames_to_send()
    [event] = core.receive({"type": "error", "id": failing.id, "code": "TOKEN_SCOPE_LOST", "message": "m"})
    assert isinstance(event, RequestFailed) and event.request is failing and event.code == "TOKEN_SCOPE_LOST"
    assert core.pending_requests == 0


def test_token_expiry_reads_exp_without_verifying_and_is_none_without_one():
    minted = token(exp_in_s=60, at=2_000_000_000)
    assert token_expiry(minted) == 2_000_000_060
    tampered = minted[:-4] + "AAAA"  # a bad signature changes nothing: the client never verifies
    assert token_expiry(tampered) == 2_000_000_060
    for text in ("garbage", "a.b.c", "a.!!!.c", "", "a.eyJzdWIiOiJhIn0.c"):  # the last one: no exp
        assert token_expiry(text) is None


# --- the SDK against a real worker ----------------------------------------------------------------

def _auth_node(start_node):
    return start_node(1, "--auth", "required", "--jwt-secret", flag(KEY1))


class Minter:
    """get_token for the tests: mints a token of `lifetime_s` at call time and counts the calls."""

    def __init__(self, lifetime_s: float, sub: str = "alice", first: list[str] | None = None) -> None:
        self.lifetime_s = lifetime_s
        self.sub = sub
        self.first = list(first or [])  # returned before any minted token
        self.calls = 0
        self.minted: list[str] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.first:
            return self.first.pop(0)
        self.minted.append(token(sub=self.sub, exp_in_s=self.lifetime_s))
        return self.minted[-1]


async def _publisher(node) -> WsClient:
    publisher = await WsClient.connect(node.ws_url(), headers=bearer(token(sub="publisher")))
    await publisher.join("lobby")
    return publisher


async def _publish(publisher: WsClient, text: str) -> None:
    await publisher.send({"type": "message", "room": "lobby", "text": text, "id": text})
    await publisher.expect("ack")


async def test_a_five_second_token_is_refreshed_three_times_without_a_disconnect_or_a_lost_message(start_node):
    node = _auth_node(start_node)
    publisher = await _publisher(node)
    get_token = Minter(lifetime_s=5)
    changes: list[StateChange] = []
    received: list[dict] = []
    try:
        async with Client(node.http_url(0, ""), get_token=get_token, on_state=changes.append, backoff=FAST) as client:
            await client.join("lobby")
            first_connection = client.connection_id
            first_exp = token_expiry(get_token.minted[0])

            async def read() -> None:
                async for frame in client:
                    received.append(frame)

            reader = asyncio.create_task(read())
            sent: list[str] = []
            async with asyncio.timeout(60):
                # Until three refreshes and past the first token's expiry plus a sweep (one a second).
                while client.token_refreshes < 3 or time.time() < first_exp + 1.5:
                    sent.append(str(len(sent)))
                    await _publish(publisher, sent[-1])
                    await asyncio.sleep(0.1)  # the publisher's pace (well under the rate limit), not a wait for a result
                    assert client.state.state is ConnectionState.CONNECTED, changes  # fail at the first disconnect
            await eventually(lambda: len(received), equals=len(sent), what="every message received")
            reader.cancel()
            assert [frame.get("text") for frame in received] == sent
            seqs = [frame["seq"] for frame in received]
            assert seqs == list(range(seqs[0], seqs[0] + len(sent)))  # continuous: nothing lost, nothing twice
            assert client.connection_id == first_connection  # the same socket all along
            assert client.token_refreshes >= 3 and get_token.calls == client.token_refreshes + 1
            reasons = [change.reason for change in changes]
            assert reasons.count("connected") == 1 and reasons.count("token_refreshed") >= 3, reasons
            assert not any(change.state is ConnectionState.WAITING for change in changes), changes
            assert "token_refresh_failed" not in reasons
        assert node.metric(0, "ringcast_connections_closed_total", 'reason="token_expired"') == 0
    finally:
        await publisher.close()


async def test_without_get_token_a_refused_token_ends_the_client_with_authentication_failed(start_node):
    node = _auth_node(start_node)
    changes: list[StateChange] = []
    async with Client(node.http_url(0, ""), token="not-a-token", on_state=changes.append, backoff=FAST) as client:
        async with asyncio.timeout(15):
            with pytest.raises(AuthenticationFailed) as failed:
                await client.join("lobby")
            assert failed.value.reason == "unauthorized"
            with pytest.raises(AuthenticationFailed):
                await client.wait_connected(5)
            with pytest.raises(AuthenticationFailed):
                await anext(client)
            with pytest.raises(AuthenticationFailed):
                await client.join("other")
        assert (client.state.state, client.state.reason) == (ConnectionState.CLOSED, "auth_failed:unauthorized")
    # One attempt, not a retry loop: the worker saw a single refused upgrade.
    assert node.metric(0, "ringcast_connections_rejected_total", 'reason="UNAUTHORIZED"') == 1
    assert not any(change.state is ConnectionState.WAITING for change in changes), changes


async def test_after_a_401_get_token_is_called_again_and_the_client_connects(start_node):
    node = _auth_node(start_node)
    get_token = Minter(lifetime_s=600, first=["not-a-token"])
    changes: list[StateChange] = []
    async with Client(node.http_url(0, ""), get_token=get_token, on_state=changes.append, backoff=FAST) as client:
        assert (await client.join("lobby"))["room"] == "lobby"
        assert get_token.calls == 2
        assert any(c.state is ConnectionState.WAITING and c.reason == "auth_failed:unauthorized" for c in changes)


async def test_after_a_4001_close_get_token_is_called_and_the_client_comes_back_and_resumes(start_node):
    node = _auth_node(start_node)
    publisher = await _publisher(node)
    get_token = Minter(lifetime_s=3)
    changes: list[StateChange] = []
    try:
        # refresh_before_s=0: no refresh in place, so each token's expiry closes the socket with 4001.
        async with Client(node.http_url(0, ""), get_token=get_token, refresh_before_s=0, on_state=changes.append,
                          backoff=FAST) as client:
            await client.join("lobby")
            first_connection = client.connection_id
            await _publish(publisher, "before")
            assert (await next_message(client))["text"] == "before"
            await eventually(lambda: any(c.reason == "auth_failed:token_expired" for c in changes), timeout_s=15,
                             what="the 4001 close")
            await _publish(publisher, "while away")  # replayed by the resume
            await eventually(lambda: client.state.state is ConnectionState.CONNECTED
                             and client.connection_id != first_connection, what="connected again")
            await _publish(publisher, "after")
            texts = [(await next_message(client))["text"] for _ in range(2)]
            assert texts == ["while away", "after"]
            assert get_token.calls >= 2
            assert client.token_refreshes == 0
    finally:
        await publisher.close()


async def test_without_get_token_an_expired_token_4001_ends_the_client(start_node):
    node = _auth_node(start_node)
    async with Client(node.http_url(0, ""), token=token(sub="alice", exp_in_s=3), backoff=FAST) as client:
        await client.join("lobby")
        async with asyncio.timeout(15):
            with pytest.raises(AuthenticationFailed) as failed:
                await anext(client)
        assert failed.value.reason == "token_expired"
        assert client.state.reason == "auth_failed:token_expired"
