"""What the engine tells listeners after each request: the outcome and how long it took.

Listeners (metrics, statistics, logs) are the application's; the engine only reports.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("whatsorder.idempotency")

# Outcomes besides engine.Outcome's: the request ended in one of the engine's errors.
IN_FLIGHT = "in_flight"
MISMATCH = "mismatch"
STORE_BUSY = "store_busy"
STORE_UNAVAILABLE = "store_unavailable"
HANDLER_ERROR = "handler_error"
INVALID_KEY = "invalid_key"


@dataclass(frozen=True, slots=True)
class IdempotencyEvent:
    scope: str
    outcome: str  # an engine.Outcome value or one of the constants above
    key_hash: str  # never the raw key: keys can carry customer data
    lookup_seconds: float  # claim, or lookup of the stored record
    total_seconds: float


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
