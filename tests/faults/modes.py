"""How hard the fault suite pushes: quick under `make test`, full under `make faults`.

`WHATSORDER_FAULTS=full` (set by `make faults`) selects the full mode; anything else is quick.
"""

from __future__ import annotations

import os

FULL = os.environ.get("WHATSORDER_FAULTS", "").lower() == "full"


def scaled(quick: int, full: int) -> int:
    """The count for this mode: `quick` under `make test`, `full` under `make faults`."""
    return full if FULL else quick


FIGURES: list[str] = []  # what each test measured, printed at the end of the run


def report(figures: str) -> None:
    """Keep a test's measured figures for the summary at the end of the run (conftest)."""
    FIGURES.append(figures.strip("\n"))
