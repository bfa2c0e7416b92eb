"""Shared steps of the router and placement tests: a ring of a node's workers, publishing it
the way the control plane does, and finding a room a given member owns."""

from __future__ import annotations

from chaos.cluster import NodeProcess, RedisServer, http_json
from chaos.eventually import eventually
from router.membership import ring_key
from router.ring import Member, Ring


def ring_of(node: NodeProcess, epoch: int) -> Ring:
    """A ring holding every worker of `node`, at `epoch`."""
    return Ring([Member(f"127.0.0.1:{p}", f"ws://127.0.0.1:{p}/ws") for p in node.ports], epoch)


async def publish_ring(redis_server: RedisServer, node: NodeProcess, epoch: int) -> Ring:
    """Write the ring of `node`'s workers where the control plane would, and wait until every worker follows it."""
    ring = ring_of(node, epoch)
    redis_server.command("SET", ring_key("ringcast:"), ring.to_json())
    for index in range(node.workers):
        await eventually(lambda: http_json(node.http_url(index, "/ring"))[1].get("epoch"), equals=epoch,
                         what=f"worker {index} to follow ring epoch {epoch}")
    return ring


def room_owned_by(ring: Ring, member_id: str) -> str:
    return next(f"room-{i}" for i in range(10_000) if ring.owner_id(f"room-{i}") == member_id)
