"""The leader lease against a real Redis: one holder, compare-and-set renew, release, expiry."""

import redis.asyncio as aioredis

from chaos.eventually import eventually
from control.lease import LeaderLease

KEY = "ringcast:control:leader"


async def test_one_holder_at_a_time_and_release_hands_over(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        first = LeaderLease(client, KEY, "a", "http://a", lease_s=5.0)
        second = LeaderLease(client, KEY, "b", "http://b", lease_s=5.0)
        assert await first.refresh() is True
        assert await second.refresh() is False and not second.is_leader
        assert await first.refresh() is True  # renewal keeps it
        assert await second.holder() == {"id": "a", "url": "http://a"}
        await first.release()
        assert not first.is_leader
        assert await second.refresh() is True and await first.refresh() is False
    finally:
        await client.aclose()


async def test_a_holder_whose_lease_was_taken_over_stops_leading(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        old = LeaderLease(client, KEY, "a", "http://a", lease_s=0.3)
        new = LeaderLease(client, KEY, "b", "http://b", lease_s=5.0)
        assert await old.refresh() is True
        # The old holder stopped renewing: its lease runs out and the new one takes it.
        await eventually(new.refresh, what="the new holder to take the expired lease", timeout_s=10)
        assert not old.is_leader  # its own deadline passed too
        assert await old.refresh() is False  # SET NX fails: the new holder's value is there
        assert await new.holder() == {"id": "b", "url": "http://b"}
    finally:
        await client.aclose()


async def test_renewal_is_compare_and_set(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        lease = LeaderLease(client, KEY, "a", "http://a", lease_s=5.0)
        assert await lease.refresh() is True
        await client.set(KEY, '{"id":"intruder"}')  # someone else's value: renewing must not extend it
        assert await lease.refresh() is False and not lease.is_leader
        assert await client.get(KEY) == b'{"id":"intruder"}'
    finally:
        await client.aclose()
