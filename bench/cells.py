"""How a figure is written in a table cell of the report."""

from __future__ import annotations

import math
from typing import Any


def num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def ratio(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}×"


def statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status}: {n:,}" for status, n in sorted(counts.items())) or "–"
