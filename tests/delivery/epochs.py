"""Failover tests' shared parts: members that record each message's (epoch, seq), a publisher that
waits for each ack and retries through the outage, both started and stopped together
(`failover_traffic`), the wait for the new epoch once the master is lost
(`FailoverTraffic.settle_in_the_new_epoch`), and the checks of what every member got.

Used by the Sentinel and Redis Cluster failover tests (tests/node/test_sentinel.py,
tests/node/test_redis_cluster.py): after a master is lost, within each epoch a member has a
contiguous run from 1, the new epoch complete, of the old one a prefix of what was acknowledged,
and a `joined {recovered: false, reason: epoch_changed}` telling it so.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from chaos.cluster import NodeProcess
from chaos.eventually import eventually
from router.client_core import Message
from tests.delivery.resuming import RETRY_CODES, ResumingReader
from tests.wsclient import WsClient


@dataclass
class EpochReader(ResumingReader):
    """A resuming member that also keeps each message's (epoch, seq), in arrival order."""

    positions: list[tuple[str, int]] = field(default_factory=list)

    def _record(self, event):
        if isinstance(event, Message):
            self.positions.append((event.frame["epoch"], event.frame["seq"]))
        return super()._record(event)


def by_epoch(positions: list[tuple[str, int]]) -> dict[str, list[int]]:
    streams: dict[str, list[int]] = {}
    for epoch, seq in positions:
        streams.setdefault(epoch, []).append(seq)
    return streams


async def publish_until_stopped(
    client: WsClient, room: str, acked: list[tuple[str, int]], stop: asyncio.Event,
    on_ack: Callable[[dict], None] = lambda frame: None, interval_s: float = 0.01,
) -> None:
    """Publish one message at a time, each acknowledged before the next; retry through the outage."""
    n = 0
    while not stop.is_set():
        await client.send({"type": "message", "room": room, "data": {"n": n}, "id": n})
        frame = await client.expect_any(("ack", "error"), timeout_s=10)
        if frame["type"] == "ack":
            acked.append((frame["epoch"], frame["seq"]))
            on_ack(frame)
            n += 1
            await asyncio.sleep(interval_s)
        else:
            assert frame["code"] in RETRY_CODES, frame
            await asyncio.sleep(0.1)


@dataclass
class FailoverTraffic:
    """A failover test's members and publisher (`failover_traffic`): what it reads and stops."""

    members: list[EpochReader]
    publisher: WsClient
    acked: list[tuple[str, int]]  # (epoch, seq) of every acknowledged publish, in order
    stop: asyncio.Event
    publishing: asyncio.Task | None = None

    async def stop_publishing(self, timeout_s: float = 15) -> None:
        """Stop after the publish in flight; re-raises whatever failed the publisher."""
        self.stop.set()
        await asyncio.wait_for(self.publishing, timeout_s)

    async def settle_in_the_new_epoch(self, old_epoch: str, acks: int = 20, timeout_s: float = 30) -> str:
        """After the master is lost: wait until `acks` publishes are acknowledged outside `old_epoch`,
        stop publishing, check that exactly one new epoch was acknowledged (`the_new_epoch`), then wait
        until every member has its last acknowledged message. Returns the new epoch.

        `timeout_s` bounds each of the two waits; past it the test fails with what it was waiting for.
        """
        await eventually(lambda: sum(1 for epoch, _ in self.acked if epoch != old_epoch) >= acks,
                         what="publishes acknowledged after the failover", timeout_s=timeout_s)
        await self.stop_publishing()
        new_epoch = the_new_epoch(self.acked, old_epoch)
        await eventually(lambda: every_member_has_the_new_epoch(self.members, self.acked, new_epoch),
                         what="every member to receive the new epoch's messages", timeout_s=timeout_s)
        return new_epoch


@asynccontextmanager
async def failover_traffic(node: NodeProcess, room: str, members: int = 4) -> AsyncIterator[FailoverTraffic]:
    """`members` EpochReaders of `room` alternating between the node's workers 0 and 1 (each fails over to
    the other), joined, and a publisher on worker 1 publishing until stopped (`publish_until_stopped`).

    On exit the publisher is stopped and closed and the members' tasks are cancelled; the members keep
    what they recorded, for the checks that follow.
    """
    readers = [EpochReader([node.ws_url(i % 2), node.ws_url(1 - i % 2)], room) for i in range(members)]
    tasks = [asyncio.create_task(m.run(until_seq=10**9, deadline_s=120)) for m in readers]
    traffic = FailoverTraffic(readers, await WsClient.connect(node.ws_url(1)), [], asyncio.Event())
    try:
        await asyncio.wait_for(asyncio.gather(*(m.joined_once.wait() for m in readers)), 15)
        await traffic.publisher.join(room)
        traffic.publishing = asyncio.create_task(publish_until_stopped(traffic.publisher, room, traffic.acked,
                                                                       traffic.stop))
        yield traffic
    except BaseException as exc:
        publishing = traffic.publishing
        if publishing is not None and publishing.done() and not publishing.cancelled():
            failure = publishing.exception()
            if failure is not None and failure is not exc:
                exc.add_note(f"the publisher had failed: {failure!r}")
        raise
    finally:
        traffic.stop.set()
        if traffic.publishing is not None:
            traffic.publishing.cancel()  # nothing if it already ended
            await asyncio.gather(traffic.publishing, return_exceptions=True)
        await traffic.publisher.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def the_new_epoch(acked: list[tuple[str, int]], old_epoch: str) -> str:
    """The one epoch acknowledged after `old_epoch`, whose acknowledged stream runs from 1 with no hole."""
    epochs = list(dict.fromkeys(epoch for epoch, _ in acked))
    assert epochs[0] == old_epoch and len(epochs) == 2, epochs
    new_stream = by_epoch(acked)[epochs[1]]
    assert new_stream == list(range(1, len(new_stream) + 1))
    return epochs[1]


def every_member_has_the_new_epoch(members: list[EpochReader], acked: list[tuple[str, int]], new_epoch: str) -> bool:
    last = by_epoch(acked)[new_epoch][-1:]
    return all(by_epoch(m.positions).get(new_epoch, [])[-1:] == last for m in members)


def assert_nothing_lost_silently(
    members: list[EpochReader], acked: list[tuple[str, int]], old_epoch: str, new_epoch: str
) -> None:
    acked_streams = by_epoch(acked)
    for member in members:
        streams = by_epoch(member.positions)
        assert set(streams) <= {old_epoch, new_epoch}, streams.keys()
        # Inside one epoch nothing is skipped: a contiguous run from 1 (the core repairs any gap).
        for epoch, seqs in streams.items():
            assert seqs == list(range(1, len(seqs) + 1)), (epoch, seqs[:5], member.gaps)
        # The new epoch: every acknowledged message, in order, once.
        assert streams[new_epoch] == acked_streams[new_epoch]
        # The old epoch: a prefix of what was acknowledged; anything after it is announced
        # lost by the move to the new epoch (which arrived, and was after the old one).
        old = streams.get(old_epoch, [])
        assert old == acked_streams[old_epoch][:len(old)]
        first_new = member.positions.index((new_epoch, streams[new_epoch][0]))
        assert all(epoch == old_epoch for epoch, _ in member.positions[:first_new])
        assert member.duplicates == 0 and member.out_of_order == 0
        # Every member is told, in a `joined` it can act on, that the old stream ended.
        told = [j for j in member.joins if j.get("epoch") == new_epoch and j.get("recovered") is False]
        assert told and told[0].get("reason") == "epoch_changed", member.joins
        for rejoin in member.rejoins:  # a resume across the failover says it could not recover
            if rejoin.since["epoch"] == old_epoch and rejoin.joined["epoch"] == new_epoch:
                assert rejoin.recovered is False and rejoin.joined.get("reason") == "epoch_changed", rejoin
