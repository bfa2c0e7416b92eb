"""Delivery across real workers over a real Redis: who gets what, in which order, in which codec."""

from __future__ import annotations

import asyncio

import aiohttp
import msgpack
import orjson

from tests.wsclient import WsClient


async def test_a_member_on_worker_1_receives_what_a_member_on_worker_2_published(start_node):
    node = start_node(2)
    listener = await WsClient.connect(node.ws_url(0))
    publisher = await WsClient.connect(node.ws_url(1))
    try:
        assert listener.welcome["workerId"] != publisher.welcome["workerId"]
        await listener.join("lobby")
        await publisher.join("lobby")
        await publisher.send({"type": "message", "room": "lobby", "payload": {"n": 1, "list": [1, "two", None]}})
        got = await listener.expect("message")
        assert got["room"] == "lobby" and got["payload"] == {"n": 1, "list": [1, "two", None]}
        assert got["from"] == publisher.welcome["connectionId"] and isinstance(got["ts"], int)
    finally:
        await listener.close()
        await publisher.close()


async def test_the_tutorial_artillery_scenario_unmodified_delivers_the_text_verbatim(start_node):
    node = start_node(2)
    members = [await WsClient.connect(node.ws_url(i % 2)) for i in range(4)]
    try:
        for member in members:
            await member.send({"type": "join", "room": "general"})  # exactly the scenario's frames
            await member.expect("joined")
        await members[0].send({"type": "message", "text": "Load test message"})
        for member in members:
            got = await member.expect("message")
            assert (got["room"], got["text"]) == ("general", "Load test message")
            assert "payload" not in got and "data" not in got
    finally:
        for member in members:
            await member.close()


async def test_json_and_msgpack_members_of_one_room_get_the_same_message(start_node):
    node = start_node(2)
    as_json = await WsClient.connect(node.ws_url(0))
    as_msgpack = await WsClient.connect(node.ws_url(0), codec="msgpack")
    remote_msgpack = await WsClient.connect(node.ws_url(1), codec="msgpack")
    clients = (as_json, as_msgpack, remote_msgpack)
    try:
        assert as_json.ws.protocol is None and as_msgpack.ws.protocol == "ringcast.msgpack"
        for client in clients:
            await client.join("mixed")
        data = {"text": "é ✓ \u0000", "n": -(2**40), "f": 1.5, "nested": [{"a": [True, None]}]}
        await remote_msgpack.send({"type": "message", "room": "mixed", "data": data})
        received = [await client.expect("message") for client in clients]
        assert all(frame == received[0] for frame in received)
        assert received[0]["data"] == data
    finally:
        for client in clients:
            await client.close()


async def test_seq_increases_by_one_per_message_and_acks_carry_the_id(start_node):
    node = start_node(1)
    client = await WsClient.connect(node.ws_url(0))
    other = await WsClient.connect(node.ws_url(0))
    try:
        first = await client.join("counted")
        await other.join("elsewhere")
        start = first["seq"]
        acks = []
        for i in range(5):
            await client.send({"type": "message", "room": "counted", "text": f"m{i}", "id": f"req-{i}"})
            acks.append(await client.expect("ack"))
        assert [a["id"] for a in acks] == [f"req-{i}" for i in range(5)]
        assert [a["seq"] for a in acks] == [start + 1 + i for i in range(5)]
        assert all(a["room"] == "counted" and a["epoch"] == acks[0]["epoch"] for a in acks)
        got = [m for m in client.seen if m["type"] == "message"]
        while len(got) < 5:
            got.append(await client.expect("message"))
        assert [(m["seq"], m["text"]) for m in got] == [(start + 1 + i, f"m{i}") for i in range(5)]
        # Another room has its own counter.
        await other.send({"type": "message", "text": "x", "id": 1})
        assert (await other.expect("ack"))["seq"] == 1
        # Without an id there is no ack: the next frame is the message itself.
        await client.send({"type": "message", "room": "counted", "text": "no-ack"})
        assert (await client.recv())["type"] == "message"
    finally:
        await client.close()
        await other.close()


async def test_concurrent_publishers_on_two_workers_every_member_sees_the_same_order(start_node):
    node = start_node(2)
    publishers = [await WsClient.connect(node.ws_url(i)) for i in (0, 1)]
    listeners = [await WsClient.connect(node.ws_url(i), codec=codec) for i, codec in ((0, "json"), (1, "msgpack"), (1, "json"))]
    per_publisher = 40
    try:
        for client in publishers + listeners:
            await client.join("race")

        async def flood(index: int, client: WsClient) -> None:
            for n in range(per_publisher):
                await client.send({"type": "message", "room": "race", "text": f"{index}:{n}"})

        await asyncio.gather(*(flood(i, p) for i, p in enumerate(publishers)))
        total = 2 * per_publisher
        orders = []
        for client in listeners + publishers:
            got = [m for m in client.seen if m["type"] == "message"]
            while len(got) < total:
                got.append(await client.expect("message"))
            orders.append([(m["seq"], m["text"]) for m in got])
        assert all(order == orders[0] for order in orders)
        seqs = [seq for seq, _ in orders[0]]
        assert seqs == list(range(seqs[0], seqs[0] + total))
        for index in (0, 1):  # each publisher's own messages keep their order
            mine = [text for _, text in orders[0] if text.startswith(f"{index}:")]
            assert mine == [f"{index}:{n}" for n in range(per_publisher)]
    finally:
        for client in publishers + listeners:
            await client.close()


async def test_a_member_never_receives_rooms_it_left_or_never_joined(start_node):
    node = start_node(1)
    a = await WsClient.connect(node.ws_url(0))
    b = await WsClient.connect(node.ws_url(0))
    try:
        await a.join("one")
        await a.join("two")
        await b.join("one")
        await b.join("two")
        await b.send({"type": "leave", "room": "one", "id": "bye"})
        assert (await b.expect("left")) == {"type": "left", "room": "one", "id": "bye"}
        await a.send({"type": "message", "room": "one", "text": "only-a"})
        await a.send({"type": "message", "room": "two", "text": "both"})
        got = await b.expect("message")
        assert (got["room"], got["text"]) == ("two", "both")
        assert [m["text"] for m in b.seen if m["type"] == "message"] == ["both"]
    finally:
        await a.close()
        await b.close()


async def test_embedded_mode_delivers_without_redis(start_node):
    # Point --redis at a port nothing listens on: the memory bus must not need it.
    node = start_node(1, "--redis", "redis://127.0.0.1:1/0", bus="memory")
    a = await WsClient.connect(node.ws_url(0))
    b = await WsClient.connect(node.ws_url(0), codec="msgpack")
    try:
        await a.join("general")
        await b.join("general")
        await b.send({"type": "message", "text": "Load test message", "id": 1})
        assert (await b.expect("ack"))["seq"] == 1
        got = await a.expect("message")
        assert (got["text"], got["seq"]) == ("Load test message", 1)
        assert node.metric(0, "ringcast_bus_connected") == 1
    finally:
        await a.close()
        await b.close()


async def test_the_subprotocol_chooses_the_codec(start_node):
    node = start_node(1)
    async with aiohttp.ClientSession() as session:
        for offered, chosen, kind in [
            (("ringcast.json",), "ringcast.json", aiohttp.WSMsgType.TEXT),
            (("ringcast.msgpack",), "ringcast.msgpack", aiohttp.WSMsgType.BINARY),
            (("something.else", "ringcast.msgpack"), "ringcast.msgpack", aiohttp.WSMsgType.BINARY),
            (("something.else",), None, aiohttp.WSMsgType.TEXT),  # nothing we speak: JSON by default
            ((), None, aiohttp.WSMsgType.TEXT),
        ]:
            ws = await session.ws_connect(node.ws_url(0), protocols=offered)
            assert ws.protocol == chosen, offered
            welcome = await ws.receive(timeout=5)
            assert welcome.type is kind, offered
            decoded = orjson.loads(welcome.data) if kind is aiohttp.WSMsgType.TEXT else msgpack.unpackb(welcome.data)
            assert decoded["type"] == "welcome"
            await ws.close()
