"""The engine's configuration, in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta


def _two_to_four_hundreds(status: int) -> bool:
    return 200 <= status < 500


@dataclass(frozen=True, slots=True)
class IdempotencyConfig:
    """How long keys live, how long duplicates wait, and what is kept.

    ``ttl``: how long a completed response is replayed. ``in_flight_wait``: how long a duplicate
    waits for the first copy to finish before it gets 409. ``lease``: how long a claim is held
    before another request may take it over (crash recovery in lease mode).
    ``store_status``: which response statuses are kept; 5xx never are, so a retry can succeed.
    """

    ttl: timedelta = timedelta(hours=24)
    in_flight_wait: timedelta = timedelta(seconds=5)
    lease: timedelta = timedelta(seconds=30)
    retry_after_seconds: int = 1
    max_stored_body_bytes: int = 64 * 1024
    store_status: Callable[[int], bool] = field(default=_two_to_four_hundreds)

    def stores_status(self, status: int) -> bool:
        """Whether a response with ``status`` is kept; 5xx never is, so retries can succeed."""
        return status < 500 and self.store_status(status)
