"""The subscriber connection (node/redis_subscriber.py) on its own, against a real redis-server.

Channels and bytes only: no bus, no rooms. Subscribe, receive in order,
unsubscribe, survive a callback bug, come back (re-subscribed, resynced)
after Redis restarts or pauses, and leave nothing behind on close.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

from chaos.eventually import eventually
from node.redis_subscriber import RedisAddress, RedisSubscriber
from router.backoff import BackoffPolicy
from tests.node.redis_view import subscriber_connections

CONFIRM_TIMEOUT_S = 5.0


class Recorder:
    """What a subscriber handed on: messages, and connection states in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.states: list[bool] = []

    def on_message(self, channel: bytes, payload: bytes) -> None:
        self.messages.append((channel, payload))

    def on_state(self, connected: bool) -> None:
        self.states.append(connected)

    def payloads(self, channel: bytes) -> list[bytes]:
        return [payload for ch, payload in self.messages if ch == channel]


@pytest.fixture
async def start_subscriber(redis_server):
    """Start a RedisSubscriber on the test Redis (1 s timeout, fast backoff); closed after the test."""
    started: list[RedisSubscriber] = []

    def start(on_message: Callable[[bytes, bytes], None] | None = None) -> tuple[RedisSubscriber, Recorder]:
        recorder = Recorder()
        sub = RedisSubscriber(
            RedisAddress.from_url(redis_server.url),
            timeout_s=1.0,
            backoff=BackoffPolicy(base_s=0.05, cap_s=0.5, jitter=0.5),
            on_message=on_message or recorder.on_message,
            on_state=recorder.on_state,
        )
        started.append(sub)
        sub.start()
        return sub, recorder

    yield start
    for sub in started:
        await sub.close()


async def publish(redis_server, channel: bytes, payload: str) -> int:
    """PUBLISH through redis-cli; the number of subscribers that received it."""
    return int((await asyncio.to_thread(redis_server.command, "PUBLISH", channel.decode(), payload)).strip())


async def channels(redis_server) -> set[bytes]:
    out = await asyncio.to_thread(redis_server.command, "PUBSUB", "CHANNELS", "*")
    return {line for line in out.splitlines() if line}


async def confirmed(sub: RedisSubscriber, channel: bytes) -> None:
    await asyncio.wait_for(sub.until_confirmed(channel), CONFIRM_TIMEOUT_S)


async def test_subscribe_receive_unsubscribe(start_subscriber, redis_server):
    subscriber, recorder = start_subscriber()
    await eventually(lambda: recorder.states, equals=[True], what="connected and resynced")
    assert subscriber.connected

    subscriber.subscribe(b"t:a")
    await confirmed(subscriber, b"t:a")
    assert subscriber.channels == {b"t:a"}
    assert await channels(redis_server) == {b"t:a"}

    assert await publish(redis_server, b"t:a", "hello world") == 1
    await eventually(lambda: recorder.messages, equals=[(b"t:a", b"hello world")], what="the message")

    subscriber.unsubscribe(b"t:a")
    assert subscriber.channels == frozenset()
    await eventually(lambda: channels(redis_server), equals=set(), what="the channel unsubscribed in Redis")
    assert await publish(redis_server, b"t:a", "nobody hears this") == 0
    assert recorder.messages == [(b"t:a", b"hello world")]


async def test_messages_arrive_in_channel_order(start_subscriber, redis_server):
    subscriber, recorder = start_subscriber()
    subscriber.subscribe(b"t:order")
    await confirmed(subscriber, b"t:order")
    # one script publishes them back to back: several arrive in one socket read
    script = "for i = 1, 200 do redis.call('PUBLISH', KEYS[1], i) end"
    await asyncio.to_thread(redis_server.command, "EVAL", script, "1", "t:order")
    wanted = [str(i).encode() for i in range(1, 201)]
    await eventually(lambda: recorder.payloads(b"t:order"), equals=wanted, what="200 messages in order")


async def test_until_confirmed_on_a_live_connection_with_nothing_in_flight_is_done_at_once(start_subscriber):
    subscriber, _ = start_subscriber()
    subscriber.subscribe(b"t:a")
    await confirmed(subscriber, b"t:a")
    assert subscriber.until_confirmed(b"t:a").done()


async def test_a_bug_in_the_message_callback_drops_that_message_only(start_subscriber, redis_server):
    calls = []

    def on_message(channel: bytes, payload: bytes) -> None:
        calls.append(payload)
        if payload == b"boom":
            raise RuntimeError("a bug in the callback")
        recorder.on_message(channel, payload)

    subscriber, recorder = start_subscriber(on_message)
    subscriber.subscribe(b"t:a")
    await confirmed(subscriber, b"t:a")
    await publish(redis_server, b"t:a", "boom")
    await publish(redis_server, b"t:a", "after")
    await eventually(lambda: recorder.payloads(b"t:a"), equals=[b"after"], what="the message after the bug")
    assert calls == [b"boom", b"after"]
    assert recorder.states == [True]  # the connection was never dropped


async def test_reconnects_and_resubscribes_exactly_the_wanted_channels_after_a_restart(start_subscriber, redis_server):
    subscriber, recorder = start_subscriber()
    for channel in (b"t:a", b"t:b"):
        subscriber.subscribe(channel)
        await confirmed(subscriber, channel)
    await eventually(lambda: recorder.states, equals=[True], what="resynced once")

    await asyncio.to_thread(redis_server.stop)
    await eventually(lambda: recorder.states, equals=[True, False], what="the connection seen as lost")
    assert not subscriber.connected
    # while Redis is down: one channel is dropped, one added; a waiter for the new one waits for the reconnect
    subscriber.unsubscribe(b"t:b")
    subscriber.subscribe(b"t:c")
    waiting = subscriber.until_confirmed(b"t:c")
    assert not waiting.done()

    await asyncio.to_thread(redis_server.start)
    await eventually(lambda: recorder.states, equals=[True, False, True], timeout_s=15, what="reconnected and resynced")
    await asyncio.wait_for(waiting, CONFIRM_TIMEOUT_S)
    assert subscriber.connected
    assert await channels(redis_server) == {b"t:a", b"t:c"}

    assert await publish(redis_server, b"t:a", "one") == 1
    assert await publish(redis_server, b"t:c", "two") == 1
    assert await publish(redis_server, b"t:b", "none") == 0
    await eventually(lambda: recorder.messages, equals=[(b"t:a", b"one"), (b"t:c", b"two")], what="both messages")


async def test_a_paused_redis_is_a_lost_connection(start_subscriber, redis_server):
    subscriber, recorder = start_subscriber()
    subscriber.subscribe(b"t:a")
    await confirmed(subscriber, b"t:a")
    redis_server.pause()
    try:
        # a PING every timeout_s / 2, lost after timeout_s of silence: well within 5 s
        await eventually(lambda: recorder.states, equals=[True, False], timeout_s=5, what="the silent Redis seen as lost")
    finally:
        redis_server.resume()
    await eventually(lambda: recorder.states, equals=[True, False, True], timeout_s=15, what="back after the pause")
    assert await publish(redis_server, b"t:a", "after the pause") == 1
    await eventually(lambda: recorder.payloads(b"t:a"), equals=[b"after the pause"], what="the message after the pause")


async def test_close_leaves_no_connection_and_does_not_reconnect(start_subscriber, redis_server):
    subscriber, recorder = start_subscriber()
    subscriber.subscribe(b"t:a")
    await confirmed(subscriber, b"t:a")
    assert await subscriber_connections(redis_server) == 1
    await subscriber.close()
    await eventually(lambda: subscriber_connections(redis_server), equals=0, what="the subscriber connection closed")
    assert recorder.states == [True]  # close is not a lost connection


@pytest.mark.parametrize(
    "url, address",
    [
        ("redis://127.0.0.1:6390/0", RedisAddress("127.0.0.1", 6390)),
        ("redis://localhost", RedisAddress("localhost", 6379)),
        ("redis://:s%40cret@127.0.0.1:6390", RedisAddress("127.0.0.1", 6390, None, "s@cret")),
        ("redis://user:pw@127.0.0.1:6390/2", RedisAddress("127.0.0.1", 6390, "user", "pw")),
    ],
)
def test_address_from_url(url, address):
    assert RedisAddress.from_url(url) == address


def test_address_refuses_other_schemes():
    with pytest.raises(ValueError, match="scheme"):
        RedisAddress.from_url("rediss://127.0.0.1:6390")
