"""Pictures of the dashboards for the docs, drawn with matplotlib from a live Prometheus.

Grafana is not in Debian, so docs/monitoring/*.png are not Grafana screenshots: this script runs
every panel's query against Prometheus's HTTP API (``query_range`` for graphs, ``query`` for
numbers) and lays the panels out as the dashboard's JSON places them. The data is real; the
look is matplotlib's. ``tests/test_prometheus_live.py`` calls it when
``WHATSORDER_DASHBOARD_PICTURES`` names a directory; by hand:

    python deploy/grafana/render.py --prometheus http://127.0.0.1:9090 --out docs/monitoring
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

DASHBOARD_DIR: Final = Path(__file__).parent / "dashboards"
ROW_INCHES: Final = 0.42  # one of Grafana's grid rows
_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def fetch(prometheus: str, path: str, **params: str) -> Any:
    url = f"{prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (an operator's URL)
        body = json.load(response)
    if body["status"] != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def legend(template: str, labels: dict[str, str]) -> str:
    return _LABEL.sub(lambda m: labels.get(m.group(1), ""), template) or "value"


def formatter(unit: str) -> FuncFormatter:
    def label(value: float, _position: float | None = None) -> str:
        if unit == "percentunit":
            return f"{value * 100:.3g}%"
        if unit == "s":
            return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
        if unit in {"reqps", "ops", "rowsps"}:
            return f"{value:.3g}/s"
        return f"{value:.4g}"

    return FuncFormatter(label)


def draw_graph(
    axes: Axes, panel: dict[str, Any], prometheus: str, window: tuple[float, float], rate: str
) -> None:
    start, end = window
    step = max(1.0, (end - start) / 200)
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", rate)
        data = fetch(
            prometheus, "query_range", query=expr, start=str(start), end=str(end), step=str(step)
        )
        for series in data["result"]:
            points = [
                (float(t) - end, float(v)) for t, v in series["values"] if math.isfinite(float(v))
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(
                    xs, ys, linewidth=1.4, label=legend(target["legendFormat"], series["metric"])
                )
    axes.yaxis.set_major_formatter(formatter(panel["fieldConfig"]["defaults"]["unit"]))
    axes.set_xlim(start - end, 0)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("seconds before the picture", fontsize=7)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=6, loc="upper left", ncols=2)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


def draw_number(axes: Axes, panel: dict[str, Any], prometheus: str, at: float) -> None:
    target = panel["targets"][0]
    result = fetch(prometheus, "query", query=target["expr"], time=str(at))["result"]
    unit = panel["fieldConfig"]["defaults"]["unit"]
    text = "no data"
    if result:
        value = float(result[0]["value"][1])
        if unit == "dateTimeFromNow":
            text = "never" if value <= 0 else f"{(at * 1000 - value) / 1000:.0f} s ago"
        else:
            text = formatter(unit)(value)
    axes.text(0.5, 0.45, text, ha="center", va="center", fontsize=22, transform=axes.transAxes)
    axes.set_axis_off()


def render(
    path: Path, prometheus: str, out: Path, minutes: float, rate: str = "1m", end: float = 0
) -> Path:
    """Draw one dashboard's panels over the ``minutes`` up to ``end`` (default: now) into
    ``out/<name>.png``; ``rate`` stands for Grafana's ``$__rate_interval`` (at least four
    scrape intervals)."""
    dashboard = json.loads(path.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(16, rows * ROW_INCHES + 0.8), dpi=90, layout="constrained")
    grid = figure.add_gridspec(rows, 24)
    end = end or time.time()
    for panel in panels:
        pos = panel["gridPos"]
        axes = figure.add_subplot(
            grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]]
        )
        axes.set_title(panel["title"], fontsize=9, loc="left")
        if panel["type"] == "stat":
            draw_number(axes, panel, prometheus, end)
        else:
            draw_graph(axes, panel, prometheus, (end - minutes * 60, end), rate)
        axes.tick_params(labelsize=7)
    stamp = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(
        f"{dashboard['title']}: its panels' queries drawn by matplotlib (not Grafana) from "
        f"Prometheus, {stamp}",
        fontsize=11,
    )
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{path.stem}.png"
    figure.savefig(target, bbox_inches="tight")
    plt.close(figure)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="its base URL")
    parser.add_argument("--out", type=Path, required=True, help="a directory for the PNGs")
    parser.add_argument("--minutes", type=float, default=10, help="the time drawn, up to now")
    parser.add_argument("--rate-interval", default="1m", help="Grafana's $__rate_interval")
    parser.add_argument("--end", type=float, default=0, help="Unix time of the picture (now)")
    arguments = parser.parse_args()
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        picture = render(
            path,
            arguments.prometheus,
            arguments.out,
            arguments.minutes,
            arguments.rate_interval,
            arguments.end,
        )
        print(f"wrote {picture}")


if __name__ == "__main__":
    main()
