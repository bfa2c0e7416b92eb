"""Failure detection and ring eligibility: pure rules, no I/O.

Owns the judgement the leader makes each tick: from the membership records,
the workers' latest heartbeats and when Redis last saw each one (all read
from Redis, all in Redis' clock), decide who is alive, who is dead, who has
come back (and must wait out the hold-down), and which members belong in the
ring. It returns the new records and the events to log; the leader writes
them. It must not talk to Redis or build rings (router.ring does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common.keys import ACTIVE, ALIVE, DEAD
from common.records import Heartbeat
from router.ring import Member


@dataclass
class MemberRecord:
    """What the control plane remembers about one worker (HASH nodes:member)."""

    id: str
    url: str  # public URL clients are given (the ring member's url)
    weight: int = 1
    address: str = ""  # internal HOST:PORT the control plane and Prometheus reach the worker at; "" if unknown
    desired: str = ACTIVE  # what the operator wants: active or draining
    health: str = ALIVE  # alive or dead, from heartbeat freshness
    alive_since_ms: int = 0
    died_at_ms: int | None = None
    hold_until_ms: int = 0  # a returning worker stays out of the ring until then (anti-flap)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "url": self.url, "weight": self.weight, "address": self.address,
            "desired": self.desired, "health": self.health,
            "aliveSinceMs": self.alive_since_ms, "diedAtMs": self.died_at_ms, "holdUntilMs": self.hold_until_ms,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MemberRecord":
        return cls(
            id=str(data["id"]), url=str(data["url"]), weight=int(data.get("weight", 1)),
            address=str(data.get("address") or ""),
            desired=str(data.get("desired", ACTIVE)), health=str(data.get("health", ALIVE)),
            alive_since_ms=int(data.get("aliveSinceMs", 0)), died_at_ms=data.get("diedAtMs"),
            hold_until_ms=int(data.get("holdUntilMs", 0)),
        )


@dataclass
class Assessment:
    records: dict[str, MemberRecord]
    changed: list[str] = field(default_factory=list)  # ids whose record must be written back
    events: list[tuple[str, str, dict]] = field(default_factory=list)  # (kind, node, detail)
    ring_members: list[Member] = field(default_factory=list)


def eligible(record: MemberRecord, heartbeat: Heartbeat | None, now_ms: int) -> bool:
    """In the ring: alive, wanted active, reporting active, and past any hold-down."""
    return (
        record.health == ALIVE
        and record.desired == ACTIVE
        and heartbeat is not None
        and heartbeat.state == ACTIVE
        and now_ms >= record.hold_until_ms
    )


def assess(
    records: dict[str, MemberRecord],
    heartbeats: dict[str, Heartbeat],
    seen_ms: dict[str, int],
    now_ms: int,
    dead_after_ms: int,
    hold_down_ms: int,
) -> Assessment:
    out = Assessment({k: dataclasses.replace(v) for k, v in records.items()})
    for node_id in sorted(set(seen_ms) | set(out.records)):
        fresh = node_id in seen_ms and now_ms - seen_ms[node_id] <= dead_after_ms
        heartbeat = heartbeats.get(node_id)
        record = out.records.get(node_id)
        if record is None:
            if not fresh or heartbeat is None:
                continue  # a stale heartbeat of a node nobody remembers: not a member
            # A heartbeat carries no weight: a new member starts at the default one.
            out.records[node_id] = MemberRecord(node_id, heartbeat.url, address=heartbeat.address, alive_since_ms=now_ms)
            out.changed.append(node_id)
            out.events.append(("joined", node_id, {"url": heartbeat.url, "address": heartbeat.address}))
            continue
        if record.health == ALIVE and not fresh:
            record.health = DEAD
            record.died_at_ms = now_ms
            out.changed.append(node_id)
            silent_ms = now_ms - seen_ms[node_id] if node_id in seen_ms else None
            out.events.append(("dead", node_id, {"silentMs": silent_ms}))
        elif record.health == DEAD and fresh:
            record.health = ALIVE
            record.alive_since_ms = now_ms
            record.hold_until_ms = now_ms + hold_down_ms
            if heartbeat is not None:
                record.url, record.address = heartbeat.url, heartbeat.address
            out.changed.append(node_id)
            out.events.append(("returned", node_id, {"holdDownMs": hold_down_ms}))
        elif record.health == ALIVE and fresh and heartbeat is not None and _readdressed(record, heartbeat):
            # Restarted with another --public-url or address faster than death detection, or upgraded
            # (or rolled back) across the address field: the record and the ring follow what the worker says.
            record.url, record.address = heartbeat.url, heartbeat.address
            out.changed.append(node_id)
    for node_id, record in sorted(out.records.items()):
        if eligible(record, heartbeats.get(node_id), now_ms):
            out.ring_members.append(Member(record.id, record.url, record.weight, record.address))
    return out


def _readdressed(record: MemberRecord, heartbeat: Heartbeat) -> bool:
    """The heartbeat names another URL or address than the record."""
    return (record.url, record.address) != (heartbeat.url, heartbeat.address)
