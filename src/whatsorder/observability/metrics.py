"""The service's Prometheus series, and the calls that count (and log) what they measure.

Metrics are module-level ``prometheus_client`` objects. Under ``whatsorder serve --workers N``
(N > 1) ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker starts, so every worker writes its
samples to files there and ``/metrics`` adds them up, whichever worker answers the scrape.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Final, Protocol

from prometheus_client import Counter, Gauge, Histogram

from whatsorder.observability.redaction import mask_phone
from whatsorder_idempotency import IdempotencyEvent, Outcome

# prometheus_client picks its storage from this variable when first imported; so do we.
MULTIPROCESS_DIR: Final = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

# The name operators filter on since before the package was split (its events are a contract).
log = logging.getLogger("whatsorder.observability")

# From a 1 ms replay to a 5 s in-flight wait; 0.1 is a bound so the p99 alert is exact there.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CLEANUP_BUCKETS: Final = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
CLEANUP_OUTCOMES: Final = ("completed", "stopped", "failed", "skipped")

IDEMPOTENCY_OUTCOMES = Counter(
    "whatsorder_idempotency_outcomes",
    "Idempotency decisions by webhook type and outcome (new, replayed, mismatch, …).",
    ["webhook_type", "outcome"],
)
IDEMPOTENCY_LOOKUP_SECONDS = Histogram(
    "whatsorder_idempotency_lookup_seconds",
    "Time to claim a key or find its stored record.",
    ["webhook_type"],
    buckets=LATENCY_BUCKETS,
)
IDEMPOTENCY_DURATION_SECONDS = Histogram(
    "whatsorder_idempotency_duration_seconds",
    "Time from claim to answer, handler included.",
    ["webhook_type", "outcome"],
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_REQUESTS = Counter(
    "whatsorder_webhook_requests",
    "Webhook requests answered, by provider, route template and HTTP status.",
    ["provider", "route", "status"],
)
SIGNATURE_FAILURES = Counter(
    "whatsorder_signature_failures",
    "Webhook requests refused for a missing or wrong signature.",
    ["provider", "reason"],
)
RATE_LIMITED = Counter(
    "whatsorder_rate_limited",
    "Requests refused (ip) or politely answered without effect (sender) for going over a limit.",
    ["kind"],
)
ORDERS_CREATED = Counter(
    "whatsorder_orders_created",
    "Orders created, by the channel they came in on.",
    ["source"],
)
PAYMENT_EVENTS = Counter(
    "whatsorder_payment_events",
    "Payment events applied, by provider and what applying one did (credited, reversed, "
    "mismatch, unknown_order, …); a replay or a duplicate event applies nothing and counts not.",
    ["provider", "result"],
)
OUTBOX_SENDS = Counter(
    "whatsorder_outbox_sends",
    "Outbox messages sent to a provider (Meta's Graph API, Twilio's Messages API), by outcome:"
    " sent; retry (failed, to be sent again later); failed (refused for good, or out of"
    " attempts); held (not sent: consent, the 24-hour window or a missing template).",
    ["outcome"],
)
OUTBOX_OUTCOMES: Final = ("sent", "retry", "failed", "held")
CLEANUP_RUNS = Counter(
    "whatsorder_cleanup_runs", "Idempotency cleanup runs by outcome.", ["outcome"]
)
CLEANUP_ROWS_DELETED = Counter(
    "whatsorder_cleanup_rows_deleted",
    "Rows removed by cleanup: expired records, and in-flight claims whose lease is long dead.",
    ["kind"],
)
CLEANUP_DURATION_SECONDS = Histogram(
    "whatsorder_cleanup_duration_seconds", "How long a cleanup run took.", buckets=CLEANUP_BUCKETS
)
# Gauges need a rule for adding up workers: the latest success anywhere; the latest count set.
CLEANUP_LAST_SUCCESS = Gauge(
    "whatsorder_cleanup_last_success_timestamp_seconds",
    "Unix time the last cleanup run completed (0: none since start).",
    multiprocess_mode="max",
)
IDEMPOTENCY_RECORDS = Gauge(
    "whatsorder_idempotency_records",
    "Rows in the idempotency table by status, as of the last count.",
    ["status"],
    multiprocess_mode="mostrecent",
)
IDEMPOTENCY_EXPIRED_RECORDS = Gauge(
    "whatsorder_idempotency_expired_records",
    "Expired idempotency rows awaiting cleanup, as of the last count.",
    multiprocess_mode="mostrecent",
)
OUTBOX_PENDING = Gauge(
    "whatsorder_outbox_pending_messages",
    "Replies in the outbox not yet sent nor given up, by provider, as of the sender's last round.",
    ["provider"],
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST_PENDING_AGE = Gauge(
    "whatsorder_outbox_oldest_pending_age_seconds",
    "How long the oldest pending reply has waited since it was queued (0: none pending), by "
    "provider, as of the sender's last round.",
    ["provider"],
    multiprocess_mode="mostrecent",
)

# The oldest worker's start: lets the "cleanup has not succeeded" alert wait for a first run.
STARTED = Gauge(
    "whatsorder_start_time_seconds",
    "Unix time this service started (its first worker).",
    multiprocess_mode="min",
)
STARTED.set(time.time())

for _outcome in CLEANUP_OUTCOMES:  # present from the start, so rate() and alerts see zeros
    CLEANUP_RUNS.labels(_outcome)
for _kind in ("expired", "stale"):
    CLEANUP_ROWS_DELETED.labels(_kind)
for _outcome in OUTBOX_OUTCOMES:
    OUTBOX_SENDS.labels(_outcome)


class CleanupReport(Protocol):
    """What ``record_cleanup`` reads from a finished cleanup run."""

    @property
    def outcome(self) -> str: ...  # one of CLEANUP_OUTCOMES

    @property
    def rows_deleted(self) -> int: ...  # expired records

    @property
    def stale_removed(self) -> int: ...  # in-flight claims with a long-dead lease

    @property
    def seconds(self) -> float: ...


def record_cleanup(report: CleanupReport) -> None:
    """Count a cleanup run; a completed one also moves the last-success time (alerted on)."""
    CLEANUP_RUNS.labels(report.outcome).inc()
    CLEANUP_ROWS_DELETED.labels("expired").inc(report.rows_deleted)
    CLEANUP_ROWS_DELETED.labels("stale").inc(report.stale_removed)
    if report.outcome == "skipped":  # another replica holds the lock: nothing was timed
        return
    CLEANUP_DURATION_SECONDS.observe(report.seconds)
    if report.outcome == "completed":
        CLEANUP_LAST_SUCCESS.set(time.time())


def set_record_counts(by_status: Mapping[str, int], expired: int | None = None) -> None:
    """Publish the idempotency table's size, counted by whoever just counted it.

    A scrape never queries the database (it must stay cheap and answerable by any worker):
    the statistics report and the cleanup job call this with the counts they already have.
    Statuses missing from ``by_status`` drop to 0.
    """
    for status in {"in_progress", "completed", *by_status}:
        IDEMPOTENCY_RECORDS.labels(status).set(by_status.get(status, 0))
    if expired is not None:
        IDEMPOTENCY_EXPIRED_RECORDS.set(expired)


def set_outbox_backlog(provider: str, pending: int, oldest_age_seconds: float) -> None:
    """Publish the outbox's depth and the age of its oldest pending reply, as just counted.

    Like the table's counts, read by whoever counts (the sender, each round), never by a scrape.
    """
    OUTBOX_PENDING.labels(provider).set(pending)
    OUTBOX_OLDEST_PENDING_AGE.labels(provider).set(oldest_age_seconds)


def record_webhook_request(provider: str, route: str, status: int) -> None:
    WEBHOOK_REQUESTS.labels(provider, route, str(status)).inc()


def record_signature_failure(provider: str, reason: str) -> None:
    """``reason``: ``missing`` or ``invalid``."""
    SIGNATURE_FAILURES.labels(provider, reason).inc()
    log.warning("Webhook signature refused", extra={"provider": provider, "reason": reason})


def record_rate_limited(kind: str, sender: str | None = None) -> None:
    """``kind``: ``ip`` (refused with 429) or ``sender`` (answered, no effect)."""
    RATE_LIMITED.labels(kind).inc()
    fields = {"kind": kind} if sender is None else {"kind": kind, "sender": mask_phone(sender)}
    log.info("Rate limited", extra=fields)


def record_order_created(source: str, order_id: int) -> None:
    ORDERS_CREATED.labels(source).inc()
    log.info("Order created", extra={"source": source, "order_id": order_id})


def record_payment_event(provider: str, result: str) -> None:
    PAYMENT_EVENTS.labels(provider, result).inc()


def record_outbox_send(outcome: str) -> None:
    """``outcome``: one of OUTBOX_OUTCOMES (the sender logs failures itself, with the reason)."""
    OUTBOX_SENDS.labels(outcome).inc()


def record_invalid_key(webhook_type: str) -> None:
    """A client-supplied idempotency key broke a rule: refused before the engine saw it."""
    IDEMPOTENCY_OUTCOMES.labels(webhook_type, Outcome.INVALID_KEY).inc()
    log.info(
        "Idempotency key invalid",
        extra={"webhook_type": webhook_type, "outcome": Outcome.INVALID_KEY},
    )


# The engine's outcomes as log events; the first three names are a contract (issue 4).
_EVENT_LOGS: Final[Mapping[str, tuple[int, str]]] = {
    Outcome.NEW: (logging.INFO, "Idempotency key is new"),
    Outcome.TAKEOVER: (logging.INFO, "Idempotency key is new"),
    Outcome.REPLAYED: (logging.INFO, "Idempotency cache hit"),
    Outcome.IN_FLIGHT: (logging.INFO, "Idempotency key in flight"),
    Outcome.MISMATCH: (logging.INFO, "Idempotency key reused for another request"),
    Outcome.NOT_STORED: (logging.WARNING, "Idempotency response not stored"),
    Outcome.LEASE_LOST: (logging.WARNING, "Idempotency lease lost"),
    Outcome.STORE_BUSY: (logging.ERROR, "Error in idempotency"),
    Outcome.STORE_UNAVAILABLE: (logging.ERROR, "Error in idempotency"),
    Outcome.HANDLER_ERROR: (logging.ERROR, "Error in idempotency"),
}


def on_idempotency_event(event: IdempotencyEvent) -> None:
    """The engine listener: count the outcome, time it, and log it (hashed key only)."""
    IDEMPOTENCY_OUTCOMES.labels(event.scope, event.outcome).inc()
    IDEMPOTENCY_LOOKUP_SECONDS.labels(event.scope).observe(event.lookup_seconds)
    IDEMPOTENCY_DURATION_SECONDS.labels(event.scope, event.outcome).observe(event.total_seconds)
    level, name = _EVENT_LOGS.get(event.outcome, (logging.WARNING, "Idempotency outcome unknown"))
    log.log(
        level,
        name,
        extra={
            "webhook_type": event.scope,
            "outcome": event.outcome,
            "key_hash": event.key_hash,
            "lookup_ms": round(event.lookup_seconds * 1000, 3),
            "total_ms": round(event.total_seconds * 1000, 3),
        },
    )
