"""The hash ring: which shard (worker) a room lives on. The only place rooms are hashed.

Owns placement: a consistent hash ring (uhashring, ketama) over the ring's
members with their weights, and the ring's epoch, which increases with every
membership change. Same members and weights in, same placement out, in every
process and on every host. Also owns the ring's JSON form, which is how the
control plane publishes it and routers and workers read it.

It must not do I/O: sources of membership (a static list, the control
plane's published ring in Redis) live in `router.membership`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from uhashring import HashRing


class EmptyRing(LookupError):
    """No live member: nothing can be routed."""


@dataclass(frozen=True, slots=True)
class Member:
    id: str  # shard id, "NODE_ID:PORT" ("host:port" by default)
    url: str  # public WebSocket URL clients are given, e.g. ws://127.0.0.1:8700/ws or wss://edge.example.com/w/a-0
    weight: int = 1  # relative capacity; a weight-2 member owns about twice the rooms
    address: str = ""  # internal host:port other hosts, the proxy and Prometheus reach the worker at; "" if unknown

    def to_dict(self) -> dict:
        return {"id": self.id, "url": self.url, "weight": self.weight, "address": self.address}


class Ring:
    """An immutable ring: build a new one (with a higher epoch) for every change."""

    def __init__(self, members: Iterable[Member] = (), epoch: int = 0) -> None:
        self.epoch = epoch
        self.members: dict[str, Member] = {}
        for member in members:
            if member.weight < 1:
                raise ValueError(f"member {member.id} has weight {member.weight}; weights are >= 1")
            if member.id in self.members:
                raise ValueError(f"duplicate member id {member.id}")
            self.members[member.id] = member
        self._hash = HashRing(
            nodes={m.id: {"weight": m.weight, "instance": m} for m in self.members.values()},
            hash_fn="ketama",
        ) if self.members else None

    def route(self, room: str) -> Member:
        """The member that owns `room`. Raises EmptyRing when there is none."""
        if self._hash is None:
            raise EmptyRing("the ring has no live members")
        return self._hash.get_node_instance(room)

    def owner_id(self, room: str) -> str:
        return self.route(room).id

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self.members

    def same_members(self, other: "Ring") -> bool:
        return self.members == other.members

    def with_members(self, members: Iterable[Member]) -> "Ring":
        """A ring with these members and the next epoch (same epoch if nothing changed)."""
        candidate = Ring(members, self.epoch)
        if candidate.same_members(self):
            return self
        return Ring(candidate.members.values(), self.epoch + 1)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "members": [m.to_dict() for m in sorted(self.members.values(), key=lambda m: m.id)]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Ring":
        members = [
            Member(str(m["id"]), str(m["url"]), int(m.get("weight", 1)), str(m.get("address", "")))
            for m in data.get("members", [])
        ]
        return cls(members, int(data.get("epoch", 0)))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Ring":
        return cls.from_dict(json.loads(text))
