"""The shipped rules are valid, and each alert fires on the series it should and only on those."""

from __future__ import annotations

from typing import Any

import yaml

from monitoring import RULE_FILES, RULE_TESTS, assert_promtool_passes, rules


def test_promtool_checks_every_rule_file() -> None:
    assert_promtool_passes("check", "rules", *map(str, RULE_FILES))


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say() -> None:
    assert_promtool_passes("test", "rules", *map(str, RULE_TESTS), timeout=120)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        cases: list[dict[str, Any]] = yaml.safe_load(path.read_text())["tests"]
        for case in cases:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert len(alerts) >= 13  # the seed's eight, the four of the SLOs, the stuck outbox
    assert alerts - firing == set(), "alerts no test makes fire"
    assert alerts - quiet == set(), "alerts no test keeps quiet"
