"""Re-drives of dead letters, in the words every layer shares: the filters an operator picks,
how long a claim may run, and why a dead letter cannot be re-driven.

A re-drive claims its row first, so two operators pressing at once run it once. A claim whose
holder died (its server stopped between the claim and the outcome) counts as failed after
`STALE_AFTER`, and the dead letter can be re-driven again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

STALE_AFTER = timedelta(minutes=5)
STATES = ("never", "running", "done", "failed")


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters an operator asked for; dates are UTC days, both included."""

    provider: str | None = None
    reason: str | None = None  # a part of the reason, any case
    received_from: date | None = None
    received_to: date | None = None
    state: str | None = None  # one of STATES


class RedriveRefused(Exception):
    """This dead letter cannot be re-driven now; the message says why, for the operator."""


class NoSuchDeadLetter(RedriveRefused):
    """There is no dead letter of that id."""


def no_payload_reason(row: dict[str, Any]) -> str:
    """Why a dead letter has nothing to re-drive."""
    if row["redrive_state"] == "done":
        return "it was re-driven (its content is not kept after that)."
    return (
        "its content is not kept: it was received before re-drives existed, its content was "
        "deleted after the retention period (WHATSORDER_DEAD_LETTER_PAYLOAD_DAYS), or it was "
        "not text that could be processed."
    )
