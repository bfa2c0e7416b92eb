"""deploy/prometheus: the alert rules are valid, their promtool unit tests pass, and every
alert has a unit test that fires and one that does not. A broken rule or a failing
unit test fails here (the last two tests break copies on purpose)."""

from __future__ import annotations

import re
import shutil

from tests.ops.helpers import RULE_TESTS, RULES, promtool, rule_count_by_promtool, rule_expressions


def test_promtool_check_rules_passes():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_seen_by_the_expression_reader():
    # The metric-name test reads expressions without a YAML parser: it must see every rule promtool sees.
    assert len(rule_expressions()) == rule_count_by_promtool()


def test_every_alert_has_a_unit_test_that_fires_and_one_that_does_not():
    alerts = set(rule_expressions())
    fires, stays_quiet = set(), set()
    lines = RULE_TESTS.read_text().splitlines()
    for i, line in enumerate(lines):
        name = re.match(r"\s*alertname: (\S+)\s*$", line)
        if name:
            expected = lines[i + 1].strip()
            assert expected.startswith("exp_alerts:"), f"{RULE_TESTS.name}:{i + 2}: exp_alerts must follow alertname"
            (stays_quiet if expected == "exp_alerts: []" else fires).add(name.group(1))
    assert alerts - fires == set(), "alerts without a unit test where they fire"
    assert alerts - stays_quiet == set(), "alerts without a unit test where they stay quiet"
    assert (fires | stays_quiet) - alerts == set(), "unit tests of alerts that do not exist"


def test_a_broken_rule_fails_the_check(tmp_path):
    broken = tmp_path / RULES.name
    broken.write_text(RULES.read_text().replace("> 1000", "> > 1000", 1))
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr)


def test_a_rule_that_changed_fails_its_unit_test(tmp_path):
    # The worker-down alert waiting 5 minutes instead of 1 is caught by its test.
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    rules = RULES.read_text()
    changed = re.sub(r"(alert: RingcastWorkerDown\n\s+expr: .*\n\s+for: )1m", r"\g<1>5m", rules)
    assert changed != rules
    (tmp_path / RULES.name).write_text(changed)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "RingcastWorkerDown" in result.stdout + result.stderr
