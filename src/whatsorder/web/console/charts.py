"""Charts drawn on the server as SVG: no script, nothing to vendor, readable without JavaScript.

Hand-written because what is needed is a few stacked bars; a chart library would bring a
script and a build for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDTH = 720
HEIGHT = 160
SERIES = (("new", "#0b5cad"), ("replayed", "#2e8b57"), ("other", "#b5651d"))


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    fill: str
    label: str


def stacked_bars(points: list[dict[str, Any]], label_of: str) -> tuple[list[Bar], int]:
    """Bars for ``points`` (each with the ``SERIES`` counts), and the tallest total."""
    tallest = max((sum(point[name] for name, _ in SERIES) for point in points), default=0)
    if not points:
        return [], 0
    slot = WIDTH / len(points)
    scale = (HEIGHT - 10) / tallest if tallest else 0
    bars: list[Bar] = []
    for index, point in enumerate(points):
        bottom = float(HEIGHT)
        for name, fill in SERIES:
            height = point[name] * scale
            if height <= 0:
                continue
            bottom -= height
            label = f"{point[label_of]:%H:00} {name}: {point[name]}"
            bars.append(Bar(index * slot + 1, bottom, slot - 2, height, fill, label))
    return bars, tallest
