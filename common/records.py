"""The records a worker and the control plane exchange through Redis, typed. No I/O.

Owns the two JSON documents of the contract `common.keys` names, and their
validation:

- `Heartbeat`: what a worker writes into `nodes:heartbeat` each beat (its
  state, load, and the `SteeringReport` of its latest drain or rebalance);
  the control plane reads it to judge liveness, build the ring and answer
  the operator API.
- `Command`: what the leader writes into `node:{id}:command`; only that
  worker reads it, with each heartbeat, and follows it (drain, undrain,
  rebalance).

Each record is frozen and turns into exactly the camelCase JSON documented in
docs/control.md (`to_json`) and back (`from_json`). Reading is strict about
what is there (a missing required field, a wrong type, an unknown state or a
negative count raises `MalformedRecord`, naming the field) and lenient about
what is not ours: unknown keys are ignored, so a newer writer may add fields.
Fields added after the first release are optional when read (a heartbeat's
`address` reads as "" when absent), so a rolling upgrade may mix old and new
workers.
It must not touch Redis, clocks or rings, nor decide anything: the records
carry what their writer knows, their readers act on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from common.keys import ACTIVE, DRAINED, DRAINING, SHUTTING_DOWN

WORKER_STATES = (ACTIVE, DRAINING, DRAINED, SHUTTING_DOWN)  # what a heartbeat may report
DESIRED_STATES = (ACTIVE, DRAINING)  # what a command may ask for
STEERING_KINDS = ("shutdown", "drain", "rebalance")

_COMPACT = (",", ":")  # the separators of every record on the wire


class MalformedRecord(ValueError):
    """A record read from Redis is not what its writer writes; the message names the record and the field."""


# --- field readers: one rule per JSON type, each error naming the record and the field ------------


def _object(data: Any, record: str) -> dict:
    if not isinstance(data, dict):
        raise MalformedRecord(f"{record}: expected a JSON object, got {type(data).__name__}")
    return data


def _loads(text: str | bytes, record: str) -> dict:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"{record}: not JSON ({exc})") from None
    return _object(data, record)


def _required(data: dict, key: str, record: str) -> Any:
    if key not in data:
        raise MalformedRecord(f"{record}: `{key}` is missing")
    return data[key]


def _count(data: dict, key: str, record: str, *, optional: bool = False) -> int | None:
    """A non-negative integer (booleans are not numbers here); None if optional and absent or null."""
    value = data.get(key) if optional else _required(data, key, record)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedRecord(f"{record}: `{key}` must be an integer >= 0, got {value!r}")
    return value


def _amount(data: dict, key: str, record: str, *, optional: bool = False) -> float | None:
    """A finite non-negative number, as a float; None if optional and absent or null."""
    value = data.get(key) if optional else _required(data, key, record)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MalformedRecord(f"{record}: `{key}` must be a finite number >= 0, got {value!r}")
    return float(value)


def _text(data: dict, key: str, record: str) -> str:
    value = _required(data, key, record)
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"{record}: `{key}` must be a non-empty string, got {value!r}")
    return value


def _optional_text(data: dict, key: str, record: str) -> str:
    """A string that older writers leave out: "" when absent or null."""
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRecord(f"{record}: `{key}` must be a string, got {value!r}")
    return value


def _choice(data: dict, key: str, record: str, allowed: tuple[str, ...]) -> str:
    value = _required(data, key, record)
    if value not in allowed:
        raise MalformedRecord(f"{record}: `{key}` must be one of {', '.join(allowed)}, got {value!r}")
    return value


# --- the records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SteeringReport:
    """How far a worker's latest steering run got (a heartbeat's `steering`)."""

    kind: str  # "shutdown", "drain" or "rebalance"
    total: int  # connections selected to move
    steered: int  # reconnect notices sent so far (closed connections count as steered)
    started_at_ms: int  # wall clock of the worker
    finished_at_ms: int | None  # None while the run goes on
    generation: int  # the rebalance generation (or command version) this run answers

    @property
    def done(self) -> bool:
        return self.finished_at_ms is not None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "total": self.total, "steered": self.steered,
            "startedAtMs": self.started_at_ms, "finishedAtMs": self.finished_at_ms,
            "done": self.done, "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "SteeringReport":
        record = "steering report"
        data = _object(data, record)
        report = cls(
            kind=_choice(data, "kind", record, STEERING_KINDS),
            total=_count(data, "total", record),
            steered=_count(data, "steered", record),
            started_at_ms=_count(data, "startedAtMs", record),
            finished_at_ms=_count(data, "finishedAtMs", record, optional=True),
            generation=_count(data, "generation", record),
        )
        done = _required(data, "done", record)
        if done is not report.done:
            raise MalformedRecord(f"{record}: `done` must be {report.done} when `finishedAtMs` is {report.finished_at_ms!r}")
        return report


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One worker's report, written each beat to `nodes:heartbeat` (docs/control.md, "Heartbeat").

    The telemetry fields default to zero so a test or a tool can build one
    from the three fields the control plane decides on; a heartbeat read from
    Redis must carry every one of them.
    """

    id: str  # the worker's shard id, NODE_ID:PORT
    url: str  # its public URL: where its clients are sent (ws://host:port/ws, or the --public-url template's)
    state: str  # one of WORKER_STATES: the worker's own view
    address: str = ""  # internal HOST:PORT the control plane and Prometheus reach it at; "" from a worker older than the field
    connections: int = 0  # open WebSockets
    rooms: int = 0  # rooms hosted (with at least one local member)
    cpu_percent: float = 0.0  # process CPU since the previous beat (may exceed 100 on several cores)
    rss_bytes: int = 0
    pid: int = 0
    started_at_ms: int = 0  # wall clock of the worker when its reporter started
    command_version: int | None = None  # the last command version acted on; None before the first read
    rebalance_generation: int | None = None  # the last rebalance generation seen; None before the first read
    steering: SteeringReport | None = None  # the latest drain or rebalance, if any

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "url": self.url,
            "address": self.address,
            "state": self.state,
            "connections": self.connections,
            "rooms": self.rooms,
            "cpuPercent": self.cpu_percent,
            "rssBytes": self.rss_bytes,
            "pid": self.pid,
            "startedAtMs": self.started_at_ms,
            "commandVersion": self.command_version,
            "rebalanceGeneration": self.rebalance_generation,
            "steering": self.steering.to_dict() if self.steering is not None else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=_COMPACT)

    @classmethod
    def from_dict(cls, data: Any) -> "Heartbeat":
        record = "heartbeat"
        data = _object(data, record)
        steering = data.get("steering")
        return cls(
            id=_text(data, "id", record),
            url=_text(data, "url", record),
            state=_choice(data, "state", record, WORKER_STATES),
            address=_optional_text(data, "address", record),
            connections=_count(data, "connections", record),
            rooms=_count(data, "rooms", record),
            cpu_percent=_amount(data, "cpuPercent", record),
            rss_bytes=_count(data, "rssBytes", record),
            pid=_count(data, "pid", record),
            started_at_ms=_count(data, "startedAtMs", record),
            command_version=_count(data, "commandVersion", record, optional=True),
            rebalance_generation=_count(data, "rebalanceGeneration", record, optional=True),
            steering=SteeringReport.from_dict(steering) if steering is not None else None,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Heartbeat":
        return cls.from_dict(_loads(text, "heartbeat"))


@dataclass(frozen=True, slots=True)
class Command:
    """The control plane's desired state for one worker, in `node:{id}:command` (docs/control.md, "Command").

    `version` and `state` are always written; the other fields appear once a
    drain or a rebalance has set them and are left out of the JSON while None
    (the worker then uses its own defaults). The worker acts when `version`
    changes (drain or undrain, by `state`) and when `rebalance` grows.
    """

    version: int = 0  # bumped by every drain and undrain
    state: str = ACTIVE  # one of DESIRED_STATES
    drain_window_s: float | None = None  # spread the drain's reconnect notices over this long
    drain_timeout_s: float | None = None  # drained by then; connections left are cut
    ring_epoch: int | None = None  # steer by the ring of at least this epoch (drain and rebalance)
    rebalance: int | None = None  # the rebalance generation
    rebalance_window_s: float | None = None  # spread the rebalance's notices over this long

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"version": self.version, "state": self.state}
        optional = (
            ("drainWindowS", self.drain_window_s), ("drainTimeoutS", self.drain_timeout_s),
            ("ringEpoch", self.ring_epoch), ("rebalance", self.rebalance),
            ("rebalanceWindowS", self.rebalance_window_s),
        )
        out.update((key, value) for key, value in optional if value is not None)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=_COMPACT)

    @classmethod
    def from_dict(cls, data: Any) -> "Command":
        record = "command"
        data = _object(data, record)
        return cls(
            version=_count(data, "version", record),
            state=_choice(data, "state", record, DESIRED_STATES),
            drain_window_s=_amount(data, "drainWindowS", record, optional=True),
            drain_timeout_s=_amount(data, "drainTimeoutS", record, optional=True),
            ring_epoch=_count(data, "ringEpoch", record, optional=True),
            rebalance=_count(data, "rebalance", record, optional=True),
            rebalance_window_s=_amount(data, "rebalanceWindowS", record, optional=True),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Command":
        return cls.from_dict(_loads(text, "command"))
