"""History policy and the recovery verdict: pure functions."""

import pytest

from node.history import HistoryPolicy, HistoryRules, parse_rule, recovery_outcome


def test_longest_prefix_wins_and_default_applies():
    rules = HistoryRules(HistoryPolicy(100, 300), ["chat:*=1000:600", "chat:vip:*=5000:3600", "cursor:*=0:0"])
    assert rules.policy_for("chat:lobby") == HistoryPolicy(1000, 600)
    assert rules.policy_for("chat:vip:1") == HistoryPolicy(5000, 3600)
    assert rules.policy_for("cursor:doc") == HistoryPolicy(0, 0)
    assert rules.policy_for("other") == HistoryPolicy(100, 300)


@pytest.mark.parametrize("rule", ["chat:=1:1", "chat:*", "chat:*=1", "chat:*=a:1", "ch*at:*=1:1", "chat:*=-1:5", "chat:*=5:0"])
def test_bad_rules_are_refused_with_the_expected_form(rule):
    with pytest.raises(ValueError, match="PREFIX|SIZE"):
        parse_rule(rule)


@pytest.mark.parametrize(
    "since_seq, since_epoch, room_seq, room_epoch, first, last, size, expected",
    [
        (5, "e1", 5, "e1", None, None, 100, (True, None)),  # nothing missed
        (5, "e1", 8, "e1", 6, 8, 100, (True, None)),  # all missed kept
        (0, "", 3, "e1", 1, 3, 100, (True, None)),  # joined an empty room, now 3 messages
        (5, "e1", 8, "e2", 1, 8, 100, (False, "epoch_changed")),
        (9, "e1", 8, "e1", None, None, 100, (False, "epoch_changed")),  # a position never seen
        (2, "e1", 12, "e1", 8, 12, 5, (False, "history_truncated")),
        (2, "e1", 12, "e1", None, None, 0, (False, "no_history")),
        (2, "e1", 500, "e1", 3, 102, 1000, (False, "too_many_missed")),
    ],
)
def test_recovery_outcome(since_seq, since_epoch, room_seq, room_epoch, first, last, size, expected):
    assert recovery_outcome(since_seq, since_epoch, room_seq, room_epoch, first, last, size) == expected
