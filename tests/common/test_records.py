"""The heartbeat and command records (common/records.py): round trips, the documented JSON, malformed input."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from common.keys import ACTIVE, DRAINING
from common.records import Command, Heartbeat, MalformedRecord, SteeringReport

CONTROL_DOC = (Path(__file__).resolve().parents[2] / "docs" / "control.md").read_text()

DRAINING_REPORT = SteeringReport("drain", total=812, steered=400, started_at_ms=1795859575000, finished_at_ms=None,
                                 generation=2)
BEAT = Heartbeat(
    id="edge-a:8700", url="wss://edge.example.com/w/edge-a-0", state=DRAINING, address="10.0.0.7:8700",
    connections=812, rooms=40,
    cpu_percent=12.0, rss_bytes=61210624, pid=4242, started_at_ms=1795859574000,
    command_version=2, rebalance_generation=3, steering=DRAINING_REPORT,
)
FULL_COMMAND = Command(version=2, state=DRAINING, drain_window_s=5.0, drain_timeout_s=30.0, ring_epoch=7,
                       rebalance=3, rebalance_window_s=5.0)


def documented_heartbeat_keys() -> tuple[list[str], list[str]]:
    """The keys of the heartbeat example in docs/control.md: (top level, steering)."""
    block = re.search(r"Heartbeat \(one Lua call.*?```json\n(.*?)```", CONTROL_DOC, re.S).group(1)
    top, _, steering = block.partition('"steering":{')
    return re.findall(r'"(\w+)":', top) + ["steering"], re.findall(r'"(\w+)":', steering)


def documented_command_keys() -> list[str]:
    example = re.search(r"Command \(per worker\): `(\{.*?\})`", CONTROL_DOC, re.S).group(1)
    return list(json.loads(example))


# --- round trips and the wire format ----------------------------------------------------------


def test_heartbeat_round_trips_with_and_without_steering():
    for beat in (BEAT, replace(BEAT, state=ACTIVE, steering=None, command_version=None, rebalance_generation=None)):
        assert Heartbeat.from_json(beat.to_json()) == beat
        assert Heartbeat.from_json(beat.to_json().encode()) == beat  # Redis hands bytes


def test_heartbeat_json_is_the_compact_camel_case_document_of_docs_control_md():
    top, steering = documented_heartbeat_keys()
    data = json.loads(BEAT.to_json())
    assert list(data) == top
    assert list(data["steering"]) == steering
    assert BEAT.to_json() == json.dumps(data, separators=(",", ":"))  # compact, in this order
    assert data["steering"] == {"kind": "drain", "total": 812, "steered": 400, "startedAtMs": 1795859575000,
                                "finishedAtMs": None, "done": False, "generation": 2}
    idle = json.loads(replace(BEAT, steering=None, command_version=None).to_json())
    assert list(idle) == top and idle["steering"] is None and idle["commandVersion"] is None


def test_a_finished_steering_report_says_done():
    report = replace(DRAINING_REPORT, finished_at_ms=1795859580000)
    assert report.done and report.to_dict()["done"] is True
    assert SteeringReport.from_dict(report.to_dict()) == report


def test_command_round_trips_and_leaves_out_what_was_never_set():
    assert Command.from_json(FULL_COMMAND.to_json()) == FULL_COMMAND
    assert list(json.loads(FULL_COMMAND.to_json())) == documented_command_keys()
    started = Command(version=0, state=ACTIVE, rebalance=4)  # what a joining worker is given
    assert started.to_json() == '{"version":0,"state":"active","rebalance":4}'
    assert Command.from_json(started.to_json()) == started
    undrained = Command(version=3, state=ACTIVE)
    assert json.loads(undrained.to_json()) == {"version": 3, "state": "active"}


def test_the_documented_command_example_reads():
    example = re.search(r"Command \(per worker\): `(\{.*?\})`", CONTROL_DOC, re.S).group(1)
    assert Command.from_json(example) == FULL_COMMAND


def test_unknown_keys_are_ignored_so_a_newer_writer_may_add_fields():
    data = dict(BEAT.to_dict(), weight=3, zone="eu")
    assert Heartbeat.from_dict(data) == BEAT
    assert Command.from_dict(dict(FULL_COMMAND.to_dict(), priority="high")) == FULL_COMMAND


def test_optional_heartbeat_fields_may_be_absent():
    data = BEAT.to_dict()
    for key in ("commandVersion", "rebalanceGeneration", "steering"):
        del data[key]
    assert Heartbeat.from_dict(data) == replace(BEAT, command_version=None, rebalance_generation=None, steering=None)


@pytest.mark.parametrize("older", [{}, {"address": None}])
def test_a_heartbeat_of_a_worker_older_than_the_address_field_reads_with_an_empty_address(older):
    data = {key: value for key, value in BEAT.to_dict().items() if key != "address"}
    assert Heartbeat.from_dict(dict(data, **older)) == replace(BEAT, address="")


def test_numbers_read_as_their_type():
    data = dict(BEAT.to_dict(), cpuPercent=7)
    assert Heartbeat.from_dict(data).cpu_percent == 7.0
    assert Command.from_dict({"version": 1, "state": "draining", "drainWindowS": 5}).drain_window_s == 5.0


# --- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    (b"{not json", "heartbeat: not JSON"),
    (b"[1, 2]", "heartbeat: expected a JSON object, got list"),
    (b"\xff\xfe", "heartbeat: not JSON"),
])
def test_a_heartbeat_that_is_not_a_json_object_is_rejected(text, message):
    with pytest.raises(MalformedRecord, match=re.escape(message)):
        Heartbeat.from_json(text)


@pytest.mark.parametrize("change, field", [
    ({"id": None}, "id"),
    ({"id": ""}, "id"),
    ({"url": 8700}, "url"),
    ({"address": 8700}, "address"),
    ({"state": "sleeping"}, "state"),
    ({"connections": "812"}, "connections"),
    ({"connections": -1}, "connections"),
    ({"connections": True}, "connections"),
    ({"rooms": 4.5}, "rooms"),
    ({"cpuPercent": "high"}, "cpuPercent"),
    ({"cpuPercent": float("nan")}, "cpuPercent"),
    ({"rssBytes": None}, "rssBytes"),
    ({"commandVersion": "2"}, "commandVersion"),
    ({"rebalanceGeneration": -3}, "rebalanceGeneration"),
])
def test_a_heartbeat_with_a_bad_field_is_rejected_naming_it(change, field):
    with pytest.raises(MalformedRecord, match=rf"^heartbeat: `{field}`"):
        Heartbeat.from_dict(dict(BEAT.to_dict(), **change))


@pytest.mark.parametrize("field", ["id", "url", "state", "connections", "rooms", "cpuPercent", "rssBytes", "pid",
                                   "startedAtMs"])
def test_a_heartbeat_missing_a_required_field_is_rejected(field):
    data = BEAT.to_dict()
    del data[field]
    with pytest.raises(MalformedRecord, match=rf"^heartbeat: `{field}` is missing"):
        Heartbeat.from_dict(data)


@pytest.mark.parametrize("steering, field", [
    ("drain", "expected a JSON object"),
    (dict(DRAINING_REPORT.to_dict(), kind="teleport"), "`kind`"),
    (dict(DRAINING_REPORT.to_dict(), steered=-1), "`steered`"),
    (dict(DRAINING_REPORT.to_dict(), done=True), "`done`"),  # done, but no finishedAtMs
    ({k: v for k, v in DRAINING_REPORT.to_dict().items() if k != "done"}, "`done` is missing"),
])
def test_a_heartbeat_with_a_bad_steering_report_is_rejected(steering, field):
    with pytest.raises(MalformedRecord, match=rf"^steering report: {re.escape(field)}"):
        Heartbeat.from_dict(dict(BEAT.to_dict(), steering=steering))


@pytest.mark.parametrize("data, field", [
    ({"state": "draining"}, "`version` is missing"),
    ({"version": 1}, "`state` is missing"),
    ({"version": 1, "state": "drained"}, "`state` must be one of active, draining"),
    ({"version": "1", "state": "active"}, "`version`"),
    ({"version": 1, "state": "draining", "drainWindowS": -5}, "`drainWindowS`"),
    ({"version": 1, "state": "draining", "drainTimeoutS": "30"}, "`drainTimeoutS`"),
    ({"version": 1, "state": "draining", "ringEpoch": 1.5}, "`ringEpoch`"),
    ({"version": 1, "state": "active", "rebalance": False}, "`rebalance`"),
    ({"version": 1, "state": "active", "rebalanceWindowS": float("inf")}, "`rebalanceWindowS`"),
])
def test_a_command_with_a_bad_field_is_rejected_naming_it(data, field):
    with pytest.raises(MalformedRecord, match=rf"^command: {re.escape(field)}"):
        Command.from_dict(data)


def test_a_command_that_is_not_a_json_object_is_rejected():
    with pytest.raises(MalformedRecord, match="^command: not JSON"):
        Command.from_json("version=2")
    with pytest.raises(MalformedRecord, match="^command: expected a JSON object, got str"):
        Command.from_json('"drain"')


def test_malformed_record_is_a_value_error():
    assert issubclass(MalformedRecord, ValueError)
