"""Each contender's ratio to ``limit``, the cheapest correct answer (``bench/limit_app.py``).

Both ratios are contender / limit: for throughput below 1 means slower than the floor, for
latency above 1 means slower. A cell shows "—" where the run has no limit (a ``latest.json``
from before it existed) or the figure is missing.
"""

from __future__ import annotations

import math
from typing import Any

from bench.contenders import LIMIT

NO_LIMIT = "—"


def to_limit(value: float | None, limit_value: float | None) -> float | None:
    """``value / limit_value``; None when either is missing or the limit's is zero."""
    if value is None or limit_value is None or math.isnan(value) or math.isnan(limit_value):
        return None
    return value / limit_value if limit_value else None


def times(ratio: float | None) -> str:
    return NO_LIMIT if ratio is None else f"{ratio:.2f}×"


def limit_row(rows: dict[str, Any]) -> dict[str, Any]:
    """The limit's figures in one group's rows ({} when it was not measured)."""
    row = rows.get(LIMIT) or {}
    return {} if "error" in row and not row.get("first") else row


def cell(figures: dict[str, Any], limit_figures: dict[str, Any], fields: list[str]) -> str:
    """ "req/s 0.45×, p50 2.20×" for the named fields (rps, p50_ms, p99_ms, slowest_ms)."""
    parts = []
    for field in fields:
        ratio = to_limit(figures.get(field), limit_figures.get(field))
        if ratio is not None:
            parts.append(f"{LABELS[field]} {times(ratio)}")
    return ", ".join(parts) or NO_LIMIT


LABELS = {"rps": "req/s", "p50_ms": "p50", "p99_ms": "p99"}
