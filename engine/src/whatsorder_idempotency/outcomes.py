"""Every way a request through the engine ends, in one vocabulary.

Results, listeners' events, logs, metrics and the statistics table all speak it. The values are
a contract: log fields, Prometheus labels and stored statistics hold them as plain strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from whatsorder_idempotency.record import StoredResponse


class Outcome(enum.StrEnum):
    # The request got a response (``Result.outcome``).
    NEW = "new"
    TAKEOVER = "takeover"  # a crashed holder's claim, or an expired record, taken over
    REPLAYED = "replayed"
    NOT_STORED = "not_stored"  # answered, nothing kept (5xx, ``keep=False``, a failed store step)
    LEASE_LOST = "lease_lost"  # answered, but a take-over fenced this holder out
    # The request ended in one of the engine's errors (events only).
    IN_FLIGHT = "in_flight"
    MISMATCH = "mismatch"
    STORE_BUSY = "store_busy"
    STORE_UNAVAILABLE = "store_unavailable"
    HANDLER_ERROR = "handler_error"
    # Refused before the engine saw it; the application reports it under this name.
    INVALID_KEY = "invalid_key"


@dataclass(frozen=True, slots=True)
class Result:
    """The response to send, and how it came about."""

    response: StoredResponse
    outcome: Outcome

    @property
    def replayed(self) -> bool:
        return self.outcome is Outcome.REPLAYED
