"""Where the ring comes from: the --nodes syntax, and following the ring published in Redis."""

from __future__ import annotations

import asyncio

import pytest

from chaos.eventually import eventually
from common.redis_connect import RedisTarget
from router.membership import RedisRingSource, parse_node, parse_nodes, ring_key, static_ring
from router.ring import Member, Ring

POLL_S = 0.05


def test_host_port_means_id_host_port_and_the_ws_path():
    assert parse_node("127.0.0.1:8700") == Member("127.0.0.1:8700", "ws://127.0.0.1:8700/ws", 1, "127.0.0.1:8700")


def test_weight_id_and_full_urls():
    assert parse_node("127.0.0.1:8701@3") == Member("127.0.0.1:8701", "ws://127.0.0.1:8701/ws", 3, "127.0.0.1:8701")
    assert parse_node("edge-a=ws://10.0.0.5:9000/rt@2") == Member("edge-a", "ws://10.0.0.5:9000/rt", 2, "10.0.0.5:9000")
    assert parse_node("wss://edge.example.com/ws") == Member("edge.example.com:443", "wss://edge.example.com/ws", 1, "edge.example.com:443")


def test_lists_are_comma_separated_and_repeatable():
    members = parse_nodes(["127.0.0.1:1,127.0.0.1:2", " 127.0.0.1:3 "])
    assert [m.id for m in members] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert static_ring([]) is None
    assert len(static_ring(["127.0.0.1:1"])) == 1


@pytest.mark.parametrize("bad", ["", "http://x:1/ws", "127.0.0.1:8700@0", "=127.0.0.1:1", "127.0.0.1:notaport"])
def test_bad_entries_are_refused(bad):
    with pytest.raises(ValueError):
        parse_node(bad)


def ring_of(*ports: int, epoch: int) -> Ring:
    return Ring([Member(f"127.0.0.1:{p}", f"ws://127.0.0.1:{p}/ws") for p in ports], epoch)


async def test_follows_the_published_ring_falls_back_keeps_the_last_and_ignores_garbage(redis_server):
    fallback = ring_of(1, epoch=0)
    source = RedisRingSource(redis_server.url, "t:", POLL_S, 0.5, fallback)
    changes: list[tuple[int, int]] = []
    source.on_change(lambda old, new: changes.append((old.epoch, new.epoch)))
    await source.start()
    try:
        # No control plane yet: the static list.
        assert source.ring is fallback and source.redis_reachable
        published = ring_of(1, 2, epoch=3)
        redis_server.command("SET", ring_key("t:"), published.to_json())
        await eventually(lambda: source.ring.epoch, equals=3, what="the published ring")
        assert source.ring.same_members(published)
        assert changes == [(0, 3)]

        # Garbage in the key: keep serving on the last good ring. One poll of our own reads it for sure.
        redis_server.command("SET", ring_key("t:"), "{not json")
        await source.poll_once()
        assert source.ring.epoch == 3 and source.redis_reachable and changes == [(0, 3)]

        # Redis gone: keep the last ring, say Redis is unreachable.
        redis_server.stop()
        await eventually(lambda: not source.redis_reachable, what="the source to notice Redis is gone")
        assert source.ring.epoch == 3

        # Redis back, empty (no control plane): the static list again.
        redis_server.start()
        await eventually(lambda: source.ring.epoch, equals=0, what="the fallback ring again")
        assert source.ring.same_members(fallback)
    finally:
        await source.close()


async def test_without_a_fallback_nothing_is_known_until_a_ring_is_published(redis_server):
    source = RedisRingSource(redis_server.url, "u:", POLL_S, 0.5)
    await source.start()
    try:
        assert len(source.ring) == 0
        redis_server.command("SET", ring_key("u:"), ring_of(5, epoch=1).to_json())
        await eventually(lambda: len(source.ring), equals=1, what="the published ring")
        assert source.ring.owner_id("lobby") == "127.0.0.1:5"
    finally:
        await source.close()


class RedisSwallowingACancellation:
    """Answers the first GET (nothing published); later GETs hang, and the first one cancelled
    returns normally instead of raising: what redis-py 8.1 sometimes does."""

    def __init__(self) -> None:
        self.gets = 0
        self.swallowed = 0
        self.hanging = asyncio.Event()

    async def get(self, key: str) -> None:
        self.gets += 1
        if self.gets > 1:
            self.hanging.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1
        return None

    async def aclose(self) -> None:
        pass


async def test_close_returns_even_if_a_redis_call_swallows_the_cancellation(monkeypatch):
    fake = RedisSwallowingACancellation()
    monkeypatch.setattr(RedisTarget, "client", lambda self, **kwargs: fake)
    source = RedisRingSource("redis://127.0.0.1:1/0", "s:", POLL_S, 0.5)
    await source.start()
    await eventually(fake.hanging.is_set, what="a poll hanging in GET")
    await asyncio.wait_for(source.close(), 10)
    assert fake.swallowed == 1
