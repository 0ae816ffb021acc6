"""What the engine tells listeners after each request: the outcome and how long it took.

Listeners (metrics, statistics, logs) are the application's; the engine only reports.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from whatsorder_idempotency.errors import (
    FingerprintMismatch,
    RequestInFlight,
    StoreBusy,
    StoreUnavailable,
)
from whatsorder_idempotency.outcomes import Outcome, Result
from whatsorder_idempotency.record import IdempotentRequest

log = logging.getLogger("whatsorder_idempotency")

# The outcomes that end in an error, under the names listeners have used for them.
IN_FLIGHT = Outcome.IN_FLIGHT
MISMATCH = Outcome.MISMATCH
STORE_BUSY = Outcome.STORE_BUSY
STORE_UNAVAILABLE = Outcome.STORE_UNAVAILABLE
HANDLER_ERROR = Outcome.HANDLER_ERROR
INVALID_KEY = Outcome.INVALID_KEY


@dataclass(frozen=True, slots=True)
class IdempotencyEvent:
    scope: str
    outcome: Outcome  # a ``str``: listeners may use it as a label or a column value as it is
    key_hash: str  # for logs and metrics: never the raw key, which can carry customer data
    lookup_seconds: float  # claim, or lookup of the stored record
    total_seconds: float
    # The raw key, for the application's own records of its deliveries (an inbox): a listener
    # that writes it anywhere shared decides whether it may.
    key: str = ""


Listener = Callable[[IdempotencyEvent], None]


def key_hash(key: str) -> str:
    """A short, stable stand-in for a key in logs and metrics."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def notify(listeners: tuple[Listener, ...], event: IdempotencyEvent) -> None:
    """Tell every listener; a failing listener is logged and never fails the request."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            log.exception("idempotency listener failed")


_ERROR_OUTCOMES: dict[type[BaseException], Outcome] = {
    FingerprintMismatch: Outcome.MISMATCH,
    RequestInFlight: Outcome.IN_FLIGHT,
    StoreBusy: Outcome.STORE_BUSY,
    StoreUnavailable: Outcome.STORE_UNAVAILABLE,
}


class Watch:
    """Times one request and reports its outcome to the listeners, whichever way it ends."""

    def __init__(self, listeners: tuple[Listener, ...], request: IdempotentRequest) -> None:
        self._listeners = listeners
        self._request = request
        self._started = time.perf_counter()
        self._lookup: float | None = None
        self._outcome: Outcome | None = None

    def looked_up(self) -> None:
        self._lookup = time.perf_counter() - self._started

    def done(self, result: Result) -> Result:
        self._outcome = result.outcome
        return result

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        if not self._listeners:
            return
        outcome = self._outcome or next(
            (name for kind, name in _ERROR_OUTCOMES.items() if isinstance(error, kind)),
            Outcome.HANDLER_ERROR,
        )
        total = time.perf_counter() - self._started
        event = IdempotencyEvent(
            scope=self._request.scope,
            outcome=outcome,
            key_hash=key_hash(self._request.key),
            lookup_seconds=self._lookup if self._lookup is not None else total,
            total_seconds=total,
            key=self._request.key,
        )
        notify(self._listeners, event)
