"""What the monitoring tests share: the rule files, their unit tests, Prometheus's binaries."""

from __future__ import annotations

import os
import shutil
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
