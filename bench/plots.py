"""PNG charts of one run for docs/benchmarks.md (run in .venv-bench, where matplotlib lives).

.venv-bench/bin/python -m bench.plots RESULTS.json FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OURS = "whatsorder"
COLOURS = {
    "whatsorder": "#1b7f3a",
    "whatsorder-tx": "#5cb85c",
    "none": "#9e9e9e",
    "limit": "#333333",
}


def _bars(results: dict[str, Any], kind: str, field: str, title: str, path: Path) -> None:
    http = results.get("throughput", {})
    if not http:
        return
    figure, axes = plt.subplots(1, len(http), figsize=(5 * len(http), 4), squeeze=False)
    for axis, (group, rows) in zip(axes[0], http.items(), strict=True):
        names, values, colours = [], [], []
        for name, row in rows.items():
            figures = row.get(kind)
            if not figures:
                continue
            names.append(name + ("" if figures.get("correct", True) else "\n(wrong replays)"))
            values.append(figures[field])
            colours.append(COLOURS.get(name, "#4a78b5"))
        axis.barh(names, values, color=colours)
        axis.invert_yaxis()
        axis.set_title(f"records in {group}")
        axis.tick_params(axis="y", labelsize=8)
        for y, value in enumerate(values):
            axis.text(value, y, f" {value:,.1f}", va="center", fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _growth(results: dict[str, Any], path: Path) -> None:
    growth = results.get("growth", {})
    if not growth:
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    for store, data in growth.items():
        levels = sorted(data["levels"].items(), key=lambda item: int(item[0]))
        sizes = [int(size) for size, _ in levels]
        axis.plot(
            sizes, [lv["replay"]["p50_ms"] for _, lv in levels], "o-", label=f"{store} replay"
        )
        axis.plot(sizes, [lv["claim"]["p50_ms"] for _, lv in levels], "s--", label=f"{store} claim")
    axis.set_xscale("log")
    axis.set_xlabel("records in the table")
    axis.set_ylabel("p50 latency, ms")
    axis.set_title("whatsorder: latency as records pile up")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _storm(results: dict[str, Any], path: Path) -> None:
    storm = results.get("storm", {})
    if not storm:
        return
    labels, values, colours = [], [], []
    for group, rows in storm.items():
        for name, row in rows.items():
            if "error" in row:
                continue
            labels.append(f"{name} ({group}), {row['effects']} effect(s)")
            values.append(row["slowest_ms"])
            colours.append(COLOURS.get(name, "#4a78b5"))
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(labels) + 1.2))
    axis.barh(labels, values, color=colours)
    axis.invert_yaxis()
    axis.tick_params(axis="y", labelsize=8)
    handler = results["settings"]["storm_sleep_ms"]
    axis.axvline(handler + 100, color="#c62828", linestyle=":", label="handler + 100 ms")
    axis.set_xlabel("slowest answer, ms")
    axis.set_title("duplicate storm: slowest of the copies' answers")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    folder = Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    _bars(results, "replay", "rps", "replay throughput, requests/s", folder / "replay.png")
    _bars(results, "first", "p50_ms", "first request p50, ms", folder / "first.png")
    _growth(results, folder / "growth.png")
    _storm(results, folder / "storm.png")


if __name__ == "__main__":
    main()
