"""Idempotency keys of publishes (node/bus.py): a retry with the same key publishes nothing twice.

On a real Redis (node/bus_redis.py, node/bus_global.py) and in the in-process bus
(node/bus_memory.py): the first publish with a key delivers and answers its
position; the same key again in the same room, within the window, answers that
position with `duplicate` and delivers nothing; another room's same key is
independent; after the window the key publishes again. Then the WebSocket
`idempotencyKey` of a `message` frame on real workers, and its `ack`.
"""

from __future__ import annotations

import asyncio

import pytest

from chaos.eventually import eventually
from node.bus import BusMessage, Position
from node.bus_global import GlobalBroadcastBus
from node.bus_memory import MemoryBus
from node.bus_redis import RedisBus, RedisBusSettings
from tests.node.redis_view import PREFIX
from tests.wsclient import WsClient


def redis_bus(redis_server, bus_class=RedisBus, window_s: int = 300) -> RedisBus:
    return bus_class(RedisBusSettings(
        url=redis_server.url, channel_prefix=PREFIX, key_prefix="ringcast:", timeout_s=2.0,
        reconnect_base_s=0.05, reconnect_cap_s=0.5, room_state_ttl_s=60, idempotency_window_s=window_s,
    ))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def started(bus, rooms=("lobby", "kitchen")) -> list[BusMessage]:
    delivered: list[BusMessage] = []
    bus.set_handlers(delivered.append)
    await bus.start()
    for room in rooms:
        await bus.subscribe(room)
    return delivered


@pytest.mark.parametrize("bus_class", [RedisBus, GlobalBroadcastBus])
async def test_a_key_publishes_once_per_room_within_the_window(redis_server, bus_class):
    bus = redis_bus(redis_server, bus_class)
    delivered = await started(bus)
    try:
        first = await bus.publish("lobby", b"one", "order-17")
        again = await bus.publish("lobby", b"one", "order-17")
        assert first == Position(1, first.epoch) and not first.duplicate
        assert again == Position(1, first.epoch, duplicate=True)
        other_room = await bus.publish("kitchen", b"one", "order-17")  # keys are per room
        assert other_room.seq == 1 and not other_room.duplicate
        unkeyed = await bus.publish("lobby", b"two")
        assert unkeyed.seq == 2 and not unkeyed.duplicate
        await eventually(lambda: [(m.room, m.seq, m.body) for m in delivered],
                         equals=[("lobby", 1, b"one"), ("kitchen", 1, b"one"), ("lobby", 2, b"two")],
                         what="each publish delivered once, the retry not at all")
        page = await bus.read_history("lobby", 0, first.epoch, 10)
        assert page.seq == 2  # nothing was appended for the retry either
        ttl_ms = int(redis_server.command("PTTL", bus.keys.idempotency_key("lobby", "order-17")))
        assert 1_000 < ttl_ms <= 300_000  # the configured window, not less
    finally:
        await bus.close()


async def test_concurrent_retries_with_one_key_publish_once(redis_server):
    bus = redis_bus(redis_server)
    delivered = await started(bus)
    try:
        positions = await asyncio.gather(*(bus.publish("lobby", b"same", "k") for _ in range(20)))
        assert {(p.seq, p.epoch) for p in positions} == {(1, positions[0].epoch)}
        assert sum(not p.duplicate for p in positions) == 1
        await bus.publish("lobby", b"marker")
        await eventually(lambda: [m.body for m in delivered], equals=[b"same", b"marker"], what="one delivery")
    finally:
        await bus.close()


async def test_after_the_window_the_key_publishes_again(redis_server):
    bus = redis_bus(redis_server, window_s=1)
    await started(bus)
    try:
        first = await bus.publish("lobby", b"x", "k")
        assert (await bus.publish("lobby", b"x", "k")).duplicate
        key = bus.keys.idempotency_key("lobby", "k")
        ttl = int(await asyncio.to_thread(redis_server.command, "PTTL", key))
        assert 0 < ttl <= 1000  # the window is the key's TTL, next to the room's state (same hash tag)
        assert "{lobby}" in key and "{lobby}" in bus.state_key("lobby")
        await eventually(lambda: redis_server.command("EXISTS", key), equals=b"0\n",
                         what="the key expired after the window")
        later = await bus.publish("lobby", b"x", "k")
        assert not later.duplicate and later.seq == first.seq + 1
    finally:
        await bus.close()


async def test_bad_keys_are_refused_before_anything_is_published(redis_server):
    bus = redis_bus(redis_server)
    await started(bus)
    try:
        for bad in ("", "x" * 65, "with space", "caf\u00e9"):
            with pytest.raises(ValueError):
                await bus.publish("lobby", b"x", bad)
        assert (await bus.publish("lobby", b"x", "x" * 64)).seq == 1
    finally:
        await bus.close()


async def test_the_memory_bus_keeps_keys_for_the_window_and_within_its_bound():
    clock = FakeClock()
    bus = MemoryBus(idempotency_window_s=10, max_idempotency_keys=2, clock=clock)
    delivered = await started(bus)
    first = await bus.publish("lobby", b"one", "a")
    assert await bus.publish("lobby", b"one", "a") == Position(1, first.epoch, duplicate=True)
    assert not (await bus.publish("kitchen", b"one", "a")).duplicate  # per room
    clock.now += 10  # the window passed
    assert (await bus.publish("lobby", b"one", "a")).seq == 2
    await bus.publish("lobby", b"b", "b")
    await bus.publish("lobby", b"c", "c")  # a third key: the oldest ("a" of lobby) is forgotten
    assert not (await bus.publish("lobby", b"one", "a")).duplicate
    await eventually(lambda: [(m.room, m.seq) for m in delivered],
                     equals=[("lobby", 1), ("kitchen", 1), ("lobby", 2), ("lobby", 3), ("lobby", 4), ("lobby", 5)],
                     what="one delivery per publish that was not a duplicate")


@pytest.mark.parametrize("bus", ["redis", "memory"])
async def test_a_websocket_publish_with_a_key_is_acked_with_the_first_position(start_node, bus):
    node = start_node(1, bus=bus)
    member = await WsClient.connect(node.ws_url(0))
    publisher = await WsClient.connect(node.ws_url(0))
    try:
        await member.join("lobby")
        await publisher.join("lobby")
        frame = {"type": "message", "room": "lobby", "text": "hi", "idempotencyKey": "m-1"}
        await publisher.send({**frame, "id": 1})
        first = await publisher.expect("ack")
        await publisher.send({**frame, "id": 2})
        again = await publisher.expect("ack")
        assert "duplicate" not in first
        assert again == {**first, "id": 2, "duplicate": True}
        await publisher.send({"type": "message", "room": "lobby", "text": "next", "id": 3})
        await publisher.expect("ack")
        got = [await member.expect("message"), await member.expect("message")]
        assert [(m["seq"], m["text"]) for m in got] == [(first["seq"], "hi"), (first["seq"] + 1, "next")]

        await publisher.send({**frame, "idempotencyKey": "has space", "id": 4})
        error = await publisher.expect("error")
        assert error["code"] == "INVALID_MESSAGE_FORMAT" and error["id"] == 4
    finally:
        await member.close()
        await publisher.close()


@pytest.mark.parametrize("bus", ["redis", "memory"])
async def test_a_workers_idempotency_window_is_its_setting(start_node, bus):
    """--idempotency-window-s reaches the bus of a real worker: past it, the same key publishes again."""
    node = start_node(1, "--idempotency-window-s", "1", bus=bus)
    publisher = await WsClient.connect(node.ws_url(0))
    try:
        await publisher.join("lobby")
        frame = {"type": "message", "room": "lobby", "text": "x", "idempotencyKey": "w"}
        await publisher.send({**frame, "id": 0})
        first = await publisher.expect("ack")

        async def acked_again() -> dict:
            await publisher.send({**frame, "id": 1})
            return await publisher.expect("ack")

        later = await eventually(lambda: acked_again(), what="the key forgotten after the 1 s window",
                                 equals={**first, "id": 1, "seq": first["seq"] + 1})
        assert "duplicate" not in later
    finally:
        await publisher.close()
