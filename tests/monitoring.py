"""What the monitoring tests share: the rules and dashboards shipped, and a real Prometheus."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import free_port, stop_process_group

Sample = tuple[str, frozenset[tuple[str, str]]]


def parse(exposition: str) -> dict[Sample, float]:
    """Every sample of a scrape, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> Sample:
    return name, frozenset(labels.items())


async def scrape(client: httpx.AsyncClient) -> dict[Sample, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def changes(
    before: dict[Sample, float], after: dict[Sample, float], prefix: str
) -> dict[Sample, float]:
    """What moved between two scrapes among samples named ``prefix…``: the registry is shared
    by every test in this process, so only differences tell what one test did."""
    return {
        sample: value - before.get(sample, 0.0)
        for sample, value in after.items()
        if sample[0].startswith(prefix) and value != before.get(sample, 0.0)
    }


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


def assert_promtool_passes(*arguments: str, timeout: float = 60) -> None:
    """Run ``promtool`` with ``arguments``; its own output is the message when it fails."""
    done = subprocess.run(
        [tool("promtool"), *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr


DASHBOARD_FILES = tuple(sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")))


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str
    legend: str

    def promql(self, rate_interval: str) -> str:
        """The query as Prometheus takes it: Grafana's ``$__rate_interval`` given a value."""
        return self.expr.replace("$__rate_interval", rate_interval)


def panel_queries() -> list[PanelQuery]:
    """Every query of every panel of the shipped dashboards."""
    return [
        PanelQuery(dashboard["title"], panel["title"], target["expr"], target["legendFormat"])
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


@dataclass(frozen=True)
class Prometheus:
    """A real ``prometheus`` process on 127.0.0.1 and the parts of its HTTP API tests read."""

    base_url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``expr`` gives now."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` now, or None while it has none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def eventually(self, what: str, check: Callable[[], bool], timeout: float = 20) -> None:
        """Wait (bounded) until ``check()`` holds: scrapes and rule evaluations take a second."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s\n{self.log_path.read_text()}")
            time.sleep(0.25)


@contextmanager
def running_prometheus(
    directory: Path, target: str, *, interval: str = "1s"
) -> Iterator[Prometheus]:
    """Debian's ``prometheus`` with the shipped rules, scraping ``target`` (host:port) every
    ``interval`` and evaluating its rules as often, on a free port and a data directory of
    its own; stopped at the end."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{"job_name": "whatsorder", "static_configs": [{"targets": [target]}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{prometheus.base_url}/-/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in 30 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield prometheus
    finally:
        stop_process_group(process)
