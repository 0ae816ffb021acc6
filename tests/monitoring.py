"""What the monitoring tests share: the rule files, their unit tests, Prometheus's binaries."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"
RULE_FILES = (DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "prometheus" / "slo.yml")
RULE_TESTS = tuple(sorted((DEPLOY / "prometheus" / "tests").glob("*.yml")))


def rules() -> list[dict[str, Any]]:
    """Every alerting and recording rule the service ships."""
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool`` (Debian's ``prometheus`` package).

    Missing, the test skips with the reason; under CI it fails, so a CI run can never pass
    without having checked the rules.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs Debian's prometheus package)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return path


DASHBOARD_FILES = tuple(sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")))


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str

    def promql(self, rate_interval: str) -> str:
        """The query as Prometheus takes it: Grafana's ``$__rate_interval`` given a value."""
        return self.expr.replace("$__rate_interval", rate_interval)


def panel_queries() -> list[PanelQuery]:
    """Every query of every panel of the shipped dashboards."""
    return [
        PanelQuery(dashboard["title"], panel["title"], target["expr"])
        for path in DASHBOARD_FILES
        for dashboard in [json.loads(path.read_text())]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def series_names(expr: str) -> set[str]:
    """The whatsorder series (and recorded series, ``whatsorder:…``) an expression reads."""
    return set(re.findall(r"\bwhatsorder[a-z0-9_:]*", expr))


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}
