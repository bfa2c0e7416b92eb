"""The client core alone: frames in, frames and events out, no sockets, no clock."""

from __future__ import annotations

import pytest

from router.client_core import (
    MAX_UNREACHABLE_HOSTS,
    ClientCore,
    ConnectionLost,
    Connected,
    Duplicate,
    Gap,
    Joined,
    Message,
    Notice,
    OutOfOrder,
    Position,
    Reconnect,
    Reply,
    RequestFailed,
    TooManyRequests,
)

WELCOME = {"type": "welcome", "protocol": 1, "connectionId": "c1", "workerId": "127.0.0.1:8700"}
URL = "ws://127.0.0.1:8700/ws"


def connect(core: ClientCore, url: str = URL) -> list[dict]:
    core.connection_opened(url)
    events = core.receive(WELCOME)
    assert events == [Connected(WELCOME, "127.0.0.1:8700")]
    return core.frames_to_send()


def joined(room: str, seq: int, epoch: str = "E1", request_id: int | None = None, **extra) -> dict:
    frame = {"type": "joined", "room": room, "seq": seq, "epoch": epoch, **extra}
    if request_id is not None:
        frame["id"] = request_id
    return frame


def message(room: str, seq: int, epoch: str = "E1") -> dict:
    return {"type": "message", "room": room, "seq": seq, "epoch": epoch, "text": f"m{seq}"}


def in_room(core: ClientCore, room: str = "lobby", seq: int = 5) -> ClientCore:
    """A core connected and joined to `room` at `seq`."""
    core.join(room)
    [join] = connect(core)
    core.receive(joined(room, seq, request_id=join["id"]))
    return core


def delivered(events: list) -> list[int]:
    return [e.frame["seq"] for e in events if isinstance(e, Message)]


def test_joins_are_queued_at_welcome_in_name_order_with_ids():
    core = ClientCore()
    core.join("b")
    core.join("a")
    assert core.frames_to_send() == []  # not connected: nothing to send yet
    frames = connect(core)
    assert [(f["type"], f["room"]) for f in frames] == [("join", "a"), ("join", "b")]
    assert frames[0]["id"] != frames[1]["id"] and "since" not in frames[0]
    assert core.frames_to_send() == []  # drained


def test_joined_matches_its_request_and_sets_the_position():
    core = ClientCore()
    core.join("lobby")
    [join] = connect(core)
    [event] = core.receive(joined("lobby", 41, request_id=join["id"]))
    assert isinstance(event, Joined) and event.request is not None and event.request.id == join["id"]
    assert event.since is None and event.recovered is None
    assert core.position("lobby") == Position(41, "E1") and core.is_live("lobby")
    assert core.pending_requests == 0


def test_messages_advance_the_position_and_duplicates_are_dropped_and_reported():
    core = in_room(ClientCore())
    events = [e for seq in (6, 7, 7, 6, 8) for e in core.receive(message("lobby", seq))]
    assert delivered(events) == [6, 7, 8]
    assert [e.frame["seq"] for e in events if isinstance(e, Duplicate)] == [7, 6]
    assert core.duplicates_dropped == 2 and core.position("lobby") == Position(8, "E1")


def test_a_new_connection_resumes_every_room_from_its_last_position():
    core = in_room(ClientCore())
    core.receive(message("lobby", 6))
    failed = core.connection_lost()
    assert failed == [] and not core.connected
    [rejoin] = connect(core)
    assert rejoin["type"] == "join" and rejoin["since"] == {"seq": 6, "epoch": "E1"}
    [event] = core.receive(joined("lobby", 9, request_id=rejoin["id"], recovered=True))
    assert event.since == Position(6, "E1") and event.recovered is True
    # The replay follows the joined: it fills 7..9, then the live stream goes on.
    assert core.position("lobby") == Position(6, "E1")
    events = [e for seq in (7, 8, 9, 10) for e in core.receive(message("lobby", seq))]
    assert delivered(events) == [7, 8, 9, 10]


def test_resume_false_rejoins_at_the_live_position_and_hands_on_everything():
    core = in_room(ClientCore(resume=False))
    core.receive(message("lobby", 6))
    core.connection_lost()
    [rejoin] = connect(core)
    assert "since" not in rejoin
    core.receive(joined("lobby", 20, request_id=rejoin["id"]))
    assert core.position("lobby") == Position(20, "E1")
    assert delivered(core.receive(message("lobby", 20))) == [20]  # not dropped: no resume, no dedup


def test_an_unrecovered_resume_is_reported_and_the_declared_jump_accepted():
    core = in_room(ClientCore())
    core.connection_lost()
    [rejoin] = connect(core)
    [event] = core.receive(joined("lobby", 40, request_id=rejoin["id"], recovered=False, reason="history_truncated"))
    assert event.unrecovered and core.unrecovered["lobby"]["reason"] == "history_truncated"
    [first] = core.receive(message("lobby", 30))
    assert isinstance(first, Message) and first.declared_jump
    assert delivered(core.receive(message("lobby", 31))) == [31]


def test_a_changed_epoch_restarts_the_stream_from_its_replay():
    core = in_room(ClientCore())
    core.connection_lost()
    [rejoin] = connect(core)
    core.receive(joined("lobby", 3, "E2", request_id=rejoin["id"], recovered=False, reason="epoch_changed"))
    assert core.position("lobby") == Position(0, "E2")
    events = [e for seq in (1, 2, 3) for e in core.receive(message("lobby", seq, "E2"))]
    assert delivered(events) == [1, 2, 3]
    [late] = core.receive(message("lobby", 9, "E1"))  # the epoch it already left
    assert isinstance(late, OutOfOrder)


def test_a_new_stream_from_seq_1_is_followed_while_connected():
    core = in_room(ClientCore())
    assert delivered(core.receive(message("lobby", 1, "E2"))) == [1]
    assert core.position("lobby") == Position(1, "E2")


def test_a_gap_on_a_live_stream_is_repaired_by_leave_and_join_with_since():
    core = in_room(ClientCore())
    core.receive(message("lobby", 6))
    [gap] = core.receive(message("lobby", 8))
    assert isinstance(gap, Gap) and gap.last == Position(6, "E1")
    assert core.frames_to_send() == [{"type": "leave", "room": "lobby"},
                                     {"type": "join", "room": "lobby", "since": {"seq": 6, "epoch": "E1"}}]
    assert not core.is_live("lobby")
    assert core.receive(message("lobby", 9)) == []  # the old membership's: the replay delivers it in place
    [event] = core.receive(joined("lobby", 9))
    assert event.since == Position(6, "E1")
    events = [e for seq in (7, 8, 9) for e in core.receive(message("lobby", seq))]
    assert delivered(events) == [7, 8, 9]


def test_a_failed_gap_repair_means_reconnect_with_backoff():
    core = in_room(ClientCore())
    core.receive(message("lobby", 8))
    core.frames_to_send()
    failed, leave = core.receive({"type": "error", "code": "BUS_UNAVAILABLE", "message": "down"})
    assert isinstance(failed, RequestFailed) and failed.request is None
    assert leave == Reconnect("rejoin_refused", None, None, close_now=True, frame=failed.frame)


def test_requests_get_ids_and_replies_and_errors_are_matched_to_them():
    core = in_room(ClientCore())
    publish = core.publish("lobby", "hi")
    history = core.history("lobby", since=Position(2, "E1"), limit=10)
    ping = core.ping()
    assert core.frames_to_send() == [
        {"type": "message", "room": "lobby", "text": "hi", "id": publish.id},
        {"type": "history", "room": "lobby", "since": {"seq": 2, "epoch": "E1"}, "limit": 10, "id": history.id},
        {"type": "ping", "id": ping.id},
    ]
    [pong] = core.receive({"type": "pong", "ts": 1, "id": ping.id})
    assert isinstance(pong, Reply) and pong.request is ping
    [error] = core.receive({"type": "error", "code": "RATE_LIMIT_EXCEEDED", "message": "slow", "id": publish.id})
    assert isinstance(error, RequestFailed) and error.request is publish and error.error().code == "RATE_LIMIT_EXCEEDED"
    assert core.receive({"type": "ack", "id": publish.id, "seq": 9}) == [Notice({"type": "ack", "id": publish.id,
                                                                                 "seq": 9})]  # answered already
    assert core.pending_requests == 1  # the history


def test_publish_needs_exactly_one_kind_of_data_and_a_connection():
    core = ClientCore()
    with pytest.raises(ConnectionLost):
        core.publish("lobby", "hi")
    core = in_room(core)
    with pytest.raises(ValueError):
        core.publish("lobby", "hi", data=1)
    assert core.publish("lobby", data=None).frame["data"] is None


def test_pending_requests_are_bounded_and_failed_when_the_connection_ends():
    core = in_room(ClientCore(max_pending_requests=3))
    requests = [core.publish("lobby", str(n)) for n in range(3)]
    with pytest.raises(TooManyRequests):
        core.publish("lobby", "one too many")
    assert len(core.frames_to_send()) == 3
    core.cancel(requests[0])
    core.publish("lobby", "room again")
    lost = core.connection_lost()
    assert {r.id for r in lost} == {r.id for r in requests[1:]} | {requests[-1].id + 1}
    assert core.pending_requests == 0 and core.frames_to_send() == []


def test_a_refused_first_join_drops_the_room_but_a_refused_rejoin_keeps_it_and_reconnects():
    core = ClientCore()
    core.join("lobby")
    [join] = connect(core)
    [failed] = core.receive({"type": "error", "code": "BUS_UNAVAILABLE", "message": "down", "id": join["id"]})
    assert failed.room_dropped and "lobby" not in core.rooms

    core = in_room(ClientCore())
    core.connection_lost()
    [rejoin] = connect(core)
    failed, reconnect = core.receive({"type": "error", "code": "BUS_UNAVAILABLE", "message": "down",
                                      "id": rejoin["id"]})
    assert not failed.room_dropped and "lobby" in core.rooms
    assert reconnect.reason == "rejoin_refused" and reconnect.close_now and reconnect.delay_s is None


def test_a_reconnect_frame_says_where_and_when_after_the_server_closes():
    core = in_room(ClientCore())
    [event] = core.receive({"type": "reconnect", "reason": "drain", "url": "ws://b/ws", "delayMs": 210})
    assert event == Reconnect("reconnect:drain", "ws://b/ws", 0.21, close_now=False, frame=event.frame)
    [event] = core.receive({"type": "reconnect", "reason": "shutdown", "delayMs": 734})
    assert event.url is None and event.delay_s == 0.734


def test_moved_is_followed_only_for_the_home_room():
    core = ClientCore()
    core.join("b")
    core.join("a")
    connect(core)
    assert core.receive({"type": "moved", "room": "b", "url": "ws://x/ws", "epoch": 1}) == []
    assert core.last_moved["b"]["url"] == "ws://x/ws"
    [move] = core.receive({"type": "moved", "room": "a", "url": "ws://x/ws", "epoch": 1})
    assert move.reason == "moved" and move.url == "ws://x/ws" and move.delay_s == 0.0 and move.close_now
    assert core.receive({"type": "moved", "room": "a", "url": URL, "epoch": 1}) == []  # already there


def test_moved_from_an_older_ring_than_the_route_answer_is_ignored():
    core = in_room(ClientCore())
    core.route_answer(5)
    [ignored] = core.receive({"type": "moved", "room": "lobby", "url": "ws://x/ws", "epoch": 4})
    assert isinstance(ignored, Notice)


def test_moved_ping_pong_is_bounded_per_ring_epoch_and_reset_by_other_reconnects():
    core = in_room(ClientCore(max_moved_follows=2))
    hint = {"type": "moved", "room": "lobby", "url": "ws://x/ws", "epoch": 3}

    def bounce() -> list:
        events = core.receive(hint)
        core.connection_lost()
        connect(core, url=f"ws://{len(core.last_moved)}-{id(events)}/ws")
        return events

    assert isinstance(bounce()[0], Reconnect) and isinstance(bounce()[0], Reconnect)
    assert isinstance(bounce()[0], Notice)  # a third move in a row at epoch 3: stay
    core.receive({"type": "reconnect", "reason": "shutdown", "delayMs": 0})
    core.connection_lost()  # left for another reason: the count starts over
    connect(core)
    assert isinstance(core.receive(hint)[0], Reconnect)
    core.connection_lost()
    connect(core)
    assert isinstance(core.receive({**hint, "epoch": 4})[0], Reconnect)  # a newer ring: counted afresh


def test_moved_to_a_host_found_unreachable_waits_for_a_newer_ring():
    # A member whose worker's host went silent (a cut link) resumes on another host; that worker's ring still
    # names the silent host as the room's owner until the control plane's detection lands: its hint must not
    # send the member back into the silence, and the next ring that names the host again is followed.
    core = in_room(ClientCore())
    core.route_answer(3)
    core.host_unreachable("ws://198.18.0.3:8700/ws")
    core.connection_lost()
    connect(core, url="ws://198.18.0.1:8700/ws")
    for url in ("ws://198.18.0.3:8700/ws", "ws://198.18.0.3:8701/ws"):  # any worker of that host
        [stale] = core.receive({"type": "moved", "room": "lobby", "url": url, "epoch": 3})
        assert isinstance(stale, Notice)
    [other] = core.receive({"type": "moved", "room": "lobby", "url": "ws://198.18.0.2:8700/ws", "epoch": 3})
    assert isinstance(other, Reconnect)  # other hosts are followed as before
    core.connection_lost()
    connect(core, url="ws://198.18.0.2:8700/ws")
    [healed] = core.receive({"type": "moved", "room": "lobby", "url": "ws://198.18.0.3:8700/ws", "epoch": 5})
    assert isinstance(healed, Reconnect) and healed.url == "ws://198.18.0.3:8700/ws"


def test_unreachable_without_a_known_ring_refuses_hints_at_the_first_epoch_it_hears():
    core = in_room(ClientCore())  # never asked a router: no ring epoch known
    core.host_unreachable("ws://198.18.0.3:8700/ws")
    core.connection_lost()
    connect(core, url="ws://198.18.0.1:8700/ws")
    hint = {"type": "moved", "room": "lobby", "url": "ws://198.18.0.3:8700/ws", "epoch": 7}
    assert isinstance(core.receive(hint)[0], Notice)
    assert isinstance(core.receive(hint)[0], Notice)  # still ring 7: still the ring that had not noticed
    assert isinstance(core.receive({**hint, "epoch": 8})[0], Reconnect)


def test_a_silent_host_that_answers_again_is_followed_again_at_the_same_ring():
    # The partition drill's member: it found host3 silent before knowing any ring epoch (it never asked a
    # router and never followed a hint), the rebalance after the heal sent it back to host3 with a notice
    # (which carries no epoch), and host3, not yet polled to the new ring, hinted it away. Back on host1,
    # the hint to host3 at the ring it already has must be followed: host3 answered since.
    core = in_room(ClientCore(), room="lobby")
    silent = "ws://198.18.0.3:8700/ws"
    core.host_unreachable(silent)
    core.connection_lost()
    connect(core, url=silent)  # host3 answers again
    assert core.unreachable_hosts == {}
    core.connection_lost()
    connect(core, url="ws://198.18.0.1:8700/ws")
    [back] = core.receive({"type": "moved", "room": "lobby", "url": silent, "epoch": 5})
    assert isinstance(back, Reconnect) and back.url == silent


def test_a_connection_to_another_host_keeps_a_silent_host_marked():
    core = in_room(ClientCore())
    core.host_unreachable("ws://198.18.0.3:8700/ws")
    core.connection_lost()
    connect(core, url="ws://198.18.0.1:8700/ws")
    assert core.unreachable_hosts == {"198.18.0.3": None}


def test_unreachable_hosts_are_bounded():
    core = in_room(ClientCore())
    core.route_answer(1)
    for i in range(MAX_UNREACHABLE_HOSTS + 10):
        core.host_unreachable(f"ws://10.0.{i // 250}.{i % 250}:8700/ws")
    core.host_unreachable("not a url")
    assert len(core._unreachable) == MAX_UNREACHABLE_HOSTS
    # The oldest were forgotten: a hint to the first host is followed again.
    assert isinstance(core.receive({"type": "moved", "room": "lobby", "url": "ws://10.0.0.0:8700/ws",
                                    "epoch": 1})[0], Reconnect)


def test_zero_moved_follows_records_hints_but_never_follows():
    core = in_room(ClientCore(max_moved_follows=0))
    [event] = core.receive({"type": "moved", "room": "lobby", "url": "ws://x/ws", "epoch": 1})
    assert isinstance(event, Notice) and core.last_moved["lobby"]["epoch"] == 1


def test_messages_of_rooms_not_joined_are_dropped_and_leave_stops_rejoining():
    core = in_room(ClientCore())
    leave = core.leave("lobby")
    assert leave is not None and core.frames_to_send() == [{"type": "leave", "room": "lobby", "id": leave.id}]
    assert core.receive(message("lobby", 6)) == [] and core.stale_dropped == 1
    core.connection_lost()
    assert connect(core) == []
    with pytest.raises(ValueError):
        core.leave("lobby")


def test_state_is_bounded_by_what_the_application_holds():
    core = in_room(ClientCore())
    for n in range(10_000):  # a long stream keeps one position per room, nothing per message
        core.receive(message("lobby", 6 + n))
    for n in range(20):  # epochs come and go: only the last few are remembered
        core.receive(message("lobby", 1, f"X{n}"))
    state = core.rooms["lobby"]
    assert core.pending_requests == 0 and len(state.epochs_left) == state.epochs_left.maxlen


def test_too_many_missed_on_a_resume_is_not_a_gap_here_the_core_fetches_page_after_page():
    core = in_room(ClientCore(), seq=5)
    core.connection_lost()
    [rejoin] = connect(core)
    # The server: more than a page missed; the oldest page (6..8) comes first, then the live stream at 20.
    [event] = core.receive(joined("lobby", 20, request_id=rejoin["id"], recovered=False, reason="too_many_missed"))
    assert not event.unrecovered and event.fetching_more and core.unrecovered == {}
    assert delivered([e for seq in (6, 7, 8) for e in core.receive(message("lobby", seq))]) == [6, 7, 8]
    jump = core.receive(message("lobby", 21))
    assert [type(e) for e in jump] == [Gap] and delivered(jump) == []  # no marker in the stream: not a loss
    leave, join = core.frames_to_send()
    assert leave == {"type": "leave", "room": "lobby"} and join["since"] == {"seq": 8, "epoch": "E1"}
    [event] = core.receive(joined("lobby", 21, recovered=True))
    assert not event.unrecovered
    assert delivered([e for seq in range(9, 22) for e in core.receive(message("lobby", seq))]) == list(range(9, 22))
    assert core.unrecovered == {}


def test_a_too_many_missed_resume_that_ends_truncated_marks_the_gap_where_it_is():
    core = in_room(ClientCore(), seq=5)
    core.connection_lost()
    [rejoin] = connect(core)
    core.receive(joined("lobby", 20, request_id=rejoin["id"], recovered=False, reason="too_many_missed"))
    for seq in (6, 7, 8):
        core.receive(message("lobby", seq))
    core.receive(message("lobby", 21))  # the jump: re-join with since 8
    core.frames_to_send()
    # Meanwhile history was trimmed past 8: the loss is real, and it is after 8.
    [event] = core.receive(joined("lobby", 21, recovered=False, reason="history_truncated"))
    assert event.unrecovered and core.unrecovered["lobby"]["reason"] == "history_truncated"
    [after] = core.receive(message("lobby", 15))
    assert isinstance(after, Message) and after.declared_jump
