"""The engine's configuration, in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from whatsorder_idempotency.errors import DEFAULT_RETRY_AFTER
from whatsorder_idempotency.record import HandlerResult, StoredResponse

# Lease mode's defaults: a duplicate that arrives after its holder died waits at most a lease
# for it to run out, so it takes over instead of getting 409 (see ``IdempotencyConfig``).
DEFAULT_LEASE = timedelta(seconds=4)
DEFAULT_IN_FLIGHT_WAIT = timedelta(seconds=5)


def two_to_four_hundreds(status: int) -> bool:
    """The statuses kept by default: successes and the client's errors, never a 5xx."""
    return 200 <= status < 500


@dataclass(frozen=True, slots=True)
class IdempotencyConfig:
    """How long keys live, how long duplicates wait, and what is kept.

    ``ttl``: how long a completed response is replayed. ``in_flight_wait``: how long a duplicate
    waits for the first copy to finish before it gets 409. ``lease``: how long a claim is held
    without renewal before another request may take it over (lease mode's crash recovery).
    Its holder renews it four times per lease while alive (``lease.Heartbeat``), so the lease
    needs to outlast only a pause of the holder or a store outage, not the handler: 4 s lets a
    killed holder's key be taken over 3–4 s after the kill, and tolerates three renewals in a
    row failing. Keep ``lease`` below ``in_flight_wait`` (4 s < 5 s by default): a duplicate
    that arrives after its holder died then outwaits the dead lease and takes over; with a
    longer lease it gets 409 and must come back. A holder paused (or cut off from its store)
    for longer than the lease may be taken over while it still runs; fencing keeps its answer
    from being stored, not its effects from happening.
    ``retry_after_seconds``: the Retry-After of a 409 in flight and of a busy store that gave
    no estimate of its own (a store that knows better, e.g. an exhausted pool, says so).
    ``max_stored_body_bytes``: a larger body is not kept; its record keeps the status and
    headers with ``Idempotency-Stored: false``, so a retry never runs the handler again.
    ``store_status``: which response statuses are kept; 5xx never are, whatever it says, so a
    retry can succeed (``stores_status`` is the one place that rule lives).
    """

    ttl: timedelta = timedelta(hours=24)
    in_flight_wait: timedelta = DEFAULT_IN_FLIGHT_WAIT
    lease: timedelta = DEFAULT_LEASE
    retry_after_seconds: int = DEFAULT_RETRY_AFTER
    max_stored_body_bytes: int = 64 * 1024
    store_status: Callable[[int], bool] = field(default=two_to_four_hundreds)

    def stores_status(self, status: int) -> bool:
        """Whether a response with ``status`` is kept; 5xx never is, so retries can succeed."""
        return status < 500 and self.store_status(status)

    def kept(self, result: HandlerResult) -> StoredResponse | None:
        """What is stored of a handler's answer; None when nothing is (5xx, ``keep=False``)."""
        response = result.response
        if not result.keep or not self.stores_status(response.status):
            return None
        if len(response.body) > self.max_stored_body_bytes:
            return response.without_body()
        return response
