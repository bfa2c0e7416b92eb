"""Presence across workers (node/presence.py): who is in a room, how many, and no ghosts after a SIGKILL.

Real redis-server, real 2-worker nodes (`start_node`), raw clients on each worker.
"""

from __future__ import annotations

import os
import signal

import pytest

from chaos.eventually import eventually
from common.settings import SettingsError
from node.config import NodeConfig
from node.presence import PresenceRules
from tests.security.tokens import KEY1, bearer, flag, token
from tests.wsclient import WsClient

TTL_S = 3  # presence_ttl_s of these nodes: a killed worker's members are gone within it
PRESENCE = ("--presence-rule", "chat:*", "--presence-ttl-s", str(TTL_S), "--placement-hint", "off")


async def ask(client: WsClient, room: str, kind: str = "presence") -> dict:
    """One presence / presence_stats request; its reply or error frame."""
    rid = f"{kind}-{room}-{len(client.seen)}"
    await client.send({"type": kind, "id": rid, "room": room})
    while True:
        frame = await client.expect_any((kind, "error"))
        if frame.get("id") == rid:
            return frame


def who(reply: dict) -> set[tuple[str, str]]:
    return {(member["user"], member["conn"]) for member in reply["members"]}


def test_presence_rules_are_prefix_globs():
    rules = PresenceRules(["chat:*", "game:lobby:*"])
    assert rules.covers("chat:1") and rules.covers("game:lobby:x")
    assert not rules.covers("cursor:1") and not rules.covers("game:1")
    assert PresenceRules(["*"]).covers("anything") and not PresenceRules([])
    with pytest.raises(SettingsError):
        NodeConfig(presence_rule=["chat:"]).validate()  # a rule names a prefix: PREFIX*


async def test_presence_lists_members_on_both_workers_and_forgets_a_sigkilled_worker(start_node):
    node = start_node(2, *PRESENCE, "--restart-backoff-base-s", "30")
    on0 = await WsClient.connect(node.ws_url(0))
    on1 = await WsClient.connect(node.ws_url(1))
    other1 = await WsClient.connect(node.ws_url(1))
    try:
        await on0.join("chat:1")
        await on1.join("chat:1")
        await other1.join("chat:1")
        everyone = {(c.welcome["connectionId"], c.welcome["connectionId"]) for c in (on0, on1, other1)}

        # Either worker answers for the whole room (without auth, the user is the connection id), once the
        # members' writes have reached Redis (a write batch after each `joined`).
        for asker in (on0, on1):
            await eventually(lambda: _members(asker, "chat:1"), what="every member listed", equals=everyone, timeout_s=10)
            reply = await ask(asker, "chat:1")
            assert (who(reply), reply["count"], reply["complete"]) == (everyone, 3, True)
        workers = {member["conn"]: member["worker"] for member in reply["members"]}
        assert workers[on0.welcome["connectionId"]] == on0.welcome["workerId"]
        assert workers[on1.welcome["connectionId"]] == on1.welcome["workerId"]
        stats = await ask(on0, "chat:1", "presence_stats")
        assert (stats["connections"], stats["users"], stats["complete"]) == (3, 3, True)

        # A room no rule covers is refused; a covered room nobody is in is just empty.
        refused = await ask(on0, "cursor:1")
        assert refused["type"] == "error" and refused["code"] == "PRESENCE_DISABLED"
        refused = await ask(on0, "cursor:1", "presence_stats")
        assert refused["code"] == "PRESENCE_DISABLED"
        assert (await ask(on0, "chat:empty"))["members"] == []
        assert (await ask(on0, "chat:1"))["count"] == 3

        # A leave and a closed socket remove their member.
        await other1.send({"type": "leave", "room": "chat:1"})
        await other1.expect("left")
        left_one = everyone - {(other1.welcome["connectionId"],) * 2}
        await eventually(lambda: _members(on0, "chat:1"), what="the leaver gone", equals=left_one, timeout_s=10)

        # SIGKILL worker 1: its member vanishes from worker 0's answer within presence_ttl_s.
        os.kill(node.worker_pid(1), signal.SIGKILL)
        survivor = {(on0.welcome["connectionId"],) * 2}
        await eventually(lambda: _members(on0, "chat:1"), what="the killed worker's members gone",
                         equals=survivor, timeout_s=TTL_S + 5)

        await on0.close()
        fresh = await WsClient.connect(node.ws_url(0))
        try:
            await eventually(lambda: _members(fresh, "chat:1"), what="a closed socket's member gone",
                             equals=set(), timeout_s=10)
        finally:
            await fresh.close()
    finally:
        for client in (on0, on1, other1):
            await client.close()


async def _members(client: WsClient, room: str) -> set[tuple[str, str]]:
    return who(await ask(client, room))


async def _count(client: WsClient, room: str) -> int:
    return (await ask(client, room))["count"]


async def test_with_auth_the_user_is_the_tokens_sub_and_the_scope_applies(start_node):
    node = start_node(2, *PRESENCE, "--jwt-secret", flag(KEY1))
    alice = await WsClient.connect(node.ws_url(0), headers=bearer(token(sub="alice", info={"name": "Alice"})))
    bob = await WsClient.connect(node.ws_url(1), headers=bearer(token(sub="bob", rooms=("chat:1",))))
    outsider = await WsClient.connect(node.ws_url(1), headers=bearer(token(sub="eve", rooms=("chat:2",))))
    try:
        await alice.join("chat:1")
        await bob.join("chat:1")
        await eventually(lambda: _count(bob, "chat:1"), what="both members listed", equals=2, timeout_s=10)
        reply = await ask(outsider, "chat:1")
        assert reply["type"] == "error" and reply["code"] == "FORBIDDEN"
        assert (await ask(outsider, "chat:1", "presence_stats"))["code"] == "FORBIDDEN"
        reply = await ask(bob, "chat:1")
        assert [(m["user"], m["info"]) for m in reply["members"]] == [("alice", {"name": "Alice"}), ("bob", None)]
        stats = await ask(alice, "chat:1", "presence_stats")
        assert (stats["connections"], stats["users"]) == (2, 2)
    finally:
        for client in (alice, bob, outsider):
            await client.close()


async def test_a_lone_memory_node_answers_presence_too(start_node):
    node = start_node(1, "--presence-rule", "chat:*", bus="memory")
    a = await WsClient.connect(node.ws_url(0), codec="msgpack")
    try:
        await a.join("chat:x")
        reply = await ask(a, "chat:x")
        assert who(reply) == {(a.welcome["connectionId"],) * 2}
    finally:
        await a.close()


def test_presence_requests_decode_like_history():
    from node.protocol import Decoder, ErrorCode, PresenceRequest, ProtocolError, ProtocolLimits
    decoder = Decoder(ProtocolLimits())
    assert decoder.decode('{"type":"presence","room":"chat:1","id":3}', "json") == PresenceRequest("chat:1", False, 3)
    assert decoder.decode('{"type":"presence_stats","room":"chat:1"}', "json") == PresenceRequest("chat:1", True)
    with pytest.raises(ProtocolError) as refused:
        decoder.decode('{"type":"presence","room":"bad room","id":"q"}', "json")
    assert refused.value.code is ErrorCode.INVALID_ROOM and refused.value.request_id == "q"


async def test_members_are_written_again_after_redis_lost_them(start_node, redis_server):
    node = start_node(1, *PRESENCE)
    member = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("chat:1")
        me = {(member.welcome["connectionId"],) * 2}
        await eventually(lambda: _members(member, "chat:1"), what="the member listed", equals=me, timeout_s=10)
        redis_server.command("FLUSHALL")  # Redis restarted empty: the worker finds its liveness key gone
        await eventually(lambda: _members(member, "chat:1"), what="the member listed again", equals=me,
                         timeout_s=TTL_S + 5)
    finally:
        await member.close()
