"""The Grafana dashboards: what the code generates, valid, portable, and reading real series."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import yaml
from prometheus_client import REGISTRY

from monitoring import (
    DASHBOARD_FILES,
    DEPLOY,
    assert_promtool_passes,
    panel_queries,
    recorded_names,
    series_names,
)
from whatsorder.observability import metrics

GRAFANA = DEPLOY / "grafana"


def generator() -> ModuleType:
    """deploy/grafana/dashboards.py, imported as the script it is (its sibling on the path)."""
    sys.path.insert(0, str(GRAFANA))
    try:
        spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GRAFANA))


def exported_names() -> set[str]:
    """Every series name the service's registry can export, labelled ones not yet used too."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    assert metrics.IDEMPOTENCY_OUTCOMES  # registered on import
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("whatsorder_")
        for suffix in suffixes[family.type]
    }


def test_the_checked_in_dashboards_are_what_the_code_generates() -> None:
    rendered: dict[Path, str] = generator().rendered()
    assert sorted(rendered) == list(DASHBOARD_FILES)
    for path, text in rendered.items():
        assert path.read_text() == text, f"run python deploy/grafana/dashboards.py ({path.name})"


def test_every_panel_reads_the_datasource_variable_never_a_uid() -> None:
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert dashboard["panels"], path.name
        for panel in dashboard["panels"]:
            sources = [panel["datasource"], *(target["datasource"] for target in panel["targets"])]
            assert all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources)
            assert panel["targets"]
            assert panel["title"]
            assert panel["description"]
        assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_query_names_only_series_the_service_exports() -> None:
    known = exported_names() | recorded_names()
    queries = panel_queries()
    assert len(queries) >= 20
    for query in queries:
        unknown = series_names(query.expr) - known
        assert not unknown, f"{query.dashboard} / {query.panel} reads {unknown}"


def test_prometheus_parses_every_query(tmp_path: Path) -> None:
    # One recording rule per query: promtool check rules runs each through PromQL's parser.
    rules = [
        {"record": f"dashboard:query:{n}", "expr": query.promql("5m")}
        for n, query in enumerate(panel_queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert_promtool_passes("check", "rules", str(path))


def test_the_provisioning_names_the_dashboards_and_a_prometheus() -> None:
    provisioning = GRAFANA / "provisioning"
    dashboards = yaml.safe_load((provisioning / "dashboards.yml").read_text())
    assert [p["type"] for p in dashboards["providers"]] == ["file"]
    sources = yaml.safe_load((provisioning / "datasources.yml").read_text())
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
