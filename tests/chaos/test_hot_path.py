"""chaos.bench.hot_path: every pure per-message step is timed on a frame that really is a publish."""

import json

import pytest

from chaos.bench import hot_path


def test_each_step_is_timed_and_the_total_is_their_sum(capsys):
    assert hot_path.main(["--number", "50", "--repeat", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    steps = [row["step"] for row in report["steps"]]
    assert steps == [what for what, _ in hot_path.steps()] and len(steps) == 5
    assert all(row["us_per_call"] > 0 for row in report["steps"])
    assert report["total_us"] == pytest.approx(sum(row["us_per_call"] for row in report["steps"]), abs=0.01)


def test_the_timed_calls_do_the_work_they_name():
    calls = dict(hot_path.steps())
    frames = calls["read the client frame (FrameReader.feed)"]()
    assert len(frames) == 1 and '"type":"message"' in frames[0][1]
    assert calls["decode and check it (Decoder.decode)"]().room == hot_path.ROOM
    wire = calls["read the bus payload (bus_wire.decode)"]()
    assert (wire.seq, wire.epoch) == (hot_path.SEQ, hot_path.EPOCH)
    member_frame = calls["build the members' JSON frame (Hub.message_frame)"]()
    assert b'"seq":123456' in member_frame and member_frame[0] == 0x81  # a final text frame


def test_out_of_bounds_counts_are_refused():
    with pytest.raises(SystemExit):
        hot_path.main(["--number", "0"])
    with pytest.raises(SystemExit):
        hot_path.main(["--repeat", str(hot_path.MAX_REPEAT + 1)])
