"""The failure detector's rules, pure: alive, dead, returned with hold-down, ring eligibility."""

from control.detector import MemberRecord, assess
from common.keys import ACTIVE, ALIVE, DEAD, DRAINING
from common.records import Heartbeat

DEAD_AFTER_MS = 3000
HOLD_MS = 5000


def beat(node_id: str, state: str = ACTIVE, url: str = "", address: str = "") -> Heartbeat:
    return Heartbeat(node_id, url or f"ws://{node_id}/ws", state, address=address)


def test_new_fresh_worker_joins_the_ring_at_once():
    out = assess({}, {"a": beat("a")}, {"a": 1000}, 1500, DEAD_AFTER_MS, HOLD_MS)
    assert [m.id for m in out.ring_members] == ["a"]
    assert out.events == [("joined", "a", {"url": "ws://a/ws", "address": ""})]
    assert out.changed == ["a"]


def test_the_ring_member_carries_the_public_url_and_the_internal_address_of_the_heartbeat():
    public = beat("edge-a:8700", url="wss://edge.example.com/w/edge-a-0", address="10.0.0.7:8700")
    out = assess({}, {"edge-a:8700": public}, {"edge-a:8700": 1000}, 1000, DEAD_AFTER_MS, HOLD_MS)
    record = out.records["edge-a:8700"]
    assert (record.url, record.address) == ("wss://edge.example.com/w/edge-a-0", "10.0.0.7:8700")
    assert [(m.url, m.address) for m in out.ring_members] == [("wss://edge.example.com/w/edge-a-0", "10.0.0.7:8700")]
    assert MemberRecord.from_dict(record.to_dict()) == record
    # A record written before the field reads with an empty address.
    assert MemberRecord.from_dict({"id": "a", "url": "ws://a/ws"}).address == ""


def test_an_alive_worker_reporting_another_url_or_address_is_followed():
    records = {"a": MemberRecord("a", "ws://a/ws")}  # written from an older worker's heartbeat: no address
    moved = beat("a", url="wss://edge.example.com/w/a", address="10.0.0.7:8700")
    out = assess(records, {"a": moved}, {"a": 1000}, 1000, DEAD_AFTER_MS, HOLD_MS)
    assert out.changed == ["a"] and out.events == []
    assert [(m.url, m.address) for m in out.ring_members] == [("wss://edge.example.com/w/a", "10.0.0.7:8700")]
    # Nothing new: nothing to write.
    again = assess(out.records, {"a": moved}, {"a": 2000}, 2000, DEAD_AFTER_MS, HOLD_MS)
    assert again.changed == []
    # Rolled back to a worker older than the field: its address is unknown again (readers use the URL's).
    older = assess(out.records, {"a": beat("a", url="wss://edge.example.com/w/a")}, {"a": 3000}, 3000,
                   DEAD_AFTER_MS, HOLD_MS)
    assert older.changed == ["a"] and older.records["a"].address == ""


def test_silent_worker_is_declared_dead_and_leaves():
    records = {"a": MemberRecord("a", "ws://a/ws"), "b": MemberRecord("b", "ws://b/ws")}
    out = assess(records, {"a": beat("a"), "b": beat("b")}, {"a": 10_000, "b": 6_000}, 10_000, DEAD_AFTER_MS, HOLD_MS)
    assert out.records["b"].health == DEAD
    assert [m.id for m in out.ring_members] == ["a"]
    assert ("dead", "b", {"silentMs": 4000}) in out.events
    assert records["b"].health == ALIVE  # the input is not mutated


def test_silence_at_exactly_the_deadline_is_still_alive():
    records = {"a": MemberRecord("a", "ws://a/ws")}
    out = assess(records, {"a": beat("a")}, {"a": 7_000}, 10_000, DEAD_AFTER_MS, HOLD_MS)
    assert out.records["a"].health == ALIVE and out.events == []


def test_returning_worker_waits_out_the_hold_down():
    records = {"a": MemberRecord("a", "ws://a/ws", health=DEAD, died_at_ms=1_000)}
    back = assess(records, {"a": beat("a")}, {"a": 20_000}, 20_000, DEAD_AFTER_MS, HOLD_MS)
    assert back.records["a"].health == ALIVE and back.records["a"].hold_until_ms == 25_000
    assert back.ring_members == [] and back.events[0][0] == "returned"
    later = assess(back.records, {"a": beat("a")}, {"a": 25_000}, 25_000, DEAD_AFTER_MS, HOLD_MS)
    assert [m.id for m in later.ring_members] == ["a"] and later.events == []


def test_draining_or_not_accepting_workers_stay_out():
    records = {"a": MemberRecord("a", "ws://a/ws", desired=DRAINING), "b": MemberRecord("b", "ws://b/ws")}
    out = assess(records, {"a": beat("a"), "b": beat("b", "shutting_down")}, {"a": 1, "b": 1}, 1, DEAD_AFTER_MS, HOLD_MS)
    assert out.ring_members == []


def test_stale_heartbeat_of_an_unknown_node_is_ignored():
    out = assess({}, {"x": beat("x")}, {"x": 0}, 10_000, DEAD_AFTER_MS, HOLD_MS)
    assert out.records == {} and out.ring_members == [] and out.events == []
