"""The Redis layout shared by workers and the control plane: key names and vocabulary.

Owns the names of every key the control plane, the routers and the workers'
heartbeat reporters read or write, and the words they exchange (worker
states, event kinds). It is the contract between `node.heartbeat`, `router/`
and `control/`, nothing more: no I/O, no logic beyond the one rule a prefix
must follow on a Redis Cluster (`check_cluster_prefixes`). docs/control.md describes each key.

All keys live in one Redis (the control plane's state is small). On a Redis
Cluster (a `redis+cluster://` URL) every name carries the hash tag `{ctl}`
right after the prefix (`ringcast:{ctl}ring`, ...): all keys are on one slot,
so each multi-key script (fenced writes, the heartbeat) runs on one shard.
On a single Redis or Sentinel the names are the prefix and the name, untagged.
"""

from __future__ import annotations

from common.settings import SettingsError

# Worker states as reported in heartbeats (the worker's own view).
ACTIVE = "active"
DRAINING = "draining"
DRAINED = "drained"
SHUTTING_DOWN = "shutting_down"

# Health as judged by the control plane from heartbeat freshness.
ALIVE = "alive"
DEAD = "dead"


CLUSTER_TAG = "{ctl}"  # the hash tag of every key on a Redis Cluster: one slot for the whole control state


def check_cluster_prefixes(**prefixes: str) -> None:
    """Refuse, with SettingsError naming the setting, a prefix holding `{` or `}` on a Redis Cluster.

    Redis hashes only the text between a key's first `{` and the first `}`
    after it. A brace in a prefix would come before the tag the names rely on
    (a room's `{room}`, the control state's `{ctl}`): `a{x}:` would put every
    room on one slot, and an empty `a{}:` would leave the names untagged, so a
    room's keys would fall on different slots and its scripts fail.
    """
    for setting_name, prefix in prefixes.items():
        if "{" in prefix or "}" in prefix:
            raise SettingsError(f"{setting_name} must not contain '{{' or '}}' with a Redis Cluster (redis+cluster:// URL): "
                                f"Redis would hash the prefix's braces instead of each name's tag; got {prefix!r}")


class Keys:
    """Every key under one prefix (the workers' and control plane's --key-prefix).

    `cluster`: the names carry CLUSTER_TAG after the prefix (a Redis Cluster,
    whose prefixes the services' settings check with `check_cluster_prefixes`).
    """

    def __init__(self, prefix: str = "ringcast:", *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster
        prefix = self.base = f"{prefix}{CLUSTER_TAG}" if cluster else prefix
        self.ring = f"{prefix}ring"  # STRING: Ring.to_json() of the current ring; written only by the leader
        self.heartbeats = f"{prefix}nodes:heartbeat"  # HASH id -> JSON of the worker's latest heartbeat
        self.seen = f"{prefix}nodes:seen"  # HASH id -> Redis server time (ms) of the latest heartbeat
        self.members = f"{prefix}nodes:member"  # HASH id -> JSON membership record; written only by the leader
        self.events = f"{prefix}events"  # LIST of event JSON, newest first, trimmed to max_events
        self.event_seq = f"{prefix}events:seq"  # STRING counter: each event's sequence number
        self.leader = f"{prefix}control:leader"  # STRING JSON {"id","url"} with a PX lease
        self.rebalance_generation = f"{prefix}rebalance:generation"  # STRING counter: one per rebalance
        # Presence (common.presence): HASH id -> JSON {"expiresAtMs","id","url"}, each process its own entry.
        self.control_replicas = f"{prefix}control:replicas"  # every running control replica, leader or not
        self.routers = f"{prefix}routers"  # every running `ringcast router` started with --redis

    def command(self, node_id: str) -> str:
        """STRING JSON: the control plane's desired state for one worker (only that worker reads it)."""
        return f"{self.base}node:{node_id}:command"

    def rooms(self, node_id: str) -> str:
        """HASH room -> local member count, rewritten by the worker with each heartbeat (bounded, expiring)."""
        return f"{self.base}node:{node_id}:rooms"
