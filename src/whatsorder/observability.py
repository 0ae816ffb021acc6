"""What an operator sees of a running service: Prometheus metrics and structured log lines.

Metrics are module-level ``prometheus_client`` objects. Under ``whatsorder serve --workers N``
(N > 1) ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker starts, so every worker writes its
samples to files there and ``/metrics`` adds them up, whichever worker answers the scrape.

Log lines carry the request's id and what the request is about (``webhook_type``, ``outcome``,
``key_hash``) from a context variable, so any log call made while serving a request has them
without passing them along. Keys appear only hashed; phone numbers only masked.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Protocol

from prometheus_client import Counter, Gauge, Histogram

from whatsorder.idempotency import IdempotencyEvent, events

# prometheus_client picks its storage from this variable when first imported; so do we.
MULTIPROCESS_DIR: Final = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

log = logging.getLogger("whatsorder.observability")

# ---------------------------------------------------------------------------------------------
# Metrics

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


def record_invalid_key(webhook_type: str) -> None:
    """A client-supplied idempotency key broke a rule: refused before the engine saw it."""
    IDEMPOTENCY_OUTCOMES.labels(webhook_type, events.INVALID_KEY).inc()
    log.info(
        "Idempotency key invalid",
        extra={"webhook_type": webhook_type, "outcome": events.INVALID_KEY},
    )


# The engine's outcomes as log events; the first three names are a contract (issue 4).
_EVENT_LOGS: Final[Mapping[str, tuple[int, str]]] = {
    "new": (logging.INFO, "Idempotency key is new"),
    "takeover": (logging.INFO, "Idempotency key is new"),
    "replayed": (logging.INFO, "Idempotency cache hit"),
    events.IN_FLIGHT: (logging.INFO, "Idempotency key in flight"),
    events.MISMATCH: (logging.INFO, "Idempotency key reused for another request"),
    "not_stored": (logging.WARNING, "Idempotency response not stored"),
    "lease_lost": (logging.WARNING, "Idempotency lease lost"),
    events.STORE_BUSY: (logging.ERROR, "Error in idempotency"),
    events.STORE_UNAVAILABLE: (logging.ERROR, "Error in idempotency"),
    events.HANDLER_ERROR: (logging.ERROR, "Error in idempotency"),
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


# ---------------------------------------------------------------------------------------------
# Request context: what every log line of a request carries

_NO_FIELDS: Final[Mapping[str, str]] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("whatsorder_log_context", default=_NO_FIELDS)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Tag the log lines of one request (a fresh context: nothing of a previous one leaks).

    On an exception the tags are kept: the error handler outside the application logs with
    them, and the next request replaces them.
    """
    token = _context.set({"request_id": request_id})
    yield
    _context.reset(token)


def bind(**fields: str) -> None:
    """Add fields (e.g. ``webhook_type``) to every later log line of the current request."""
    _context.set({**_context.get(), **fields})


# ---------------------------------------------------------------------------------------------
# Log formatting

CONTEXT_FIELDS: Final = ("webhook_type", "outcome", "key_hash")
_RECORD_ATTRIBUTES: Final = frozenset(
    {*vars(logging.makeLogRecord({})), "message", "asctime", "taskName", "color_message"}
)  # color_message: uvicorn's own copy of the message, with terminal colours
# Written as they are: ids and hashes, whose runs of digits are no phone numbers.
_UNMASKED: Final = frozenset({"request_id", "key_hash", "time"})
# International numbers, with or without "+" (WhatsApp ids have none): 8 to 15 digits.
_PHONE: Final = re.compile(r"(?<![\w+])\+?\d{8,15}(?!\d)")


def mask_phone(text: str) -> str:
    """Every phone-like number in ``text`` with all but its last 4 digits starred."""
    return _PHONE.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    number = match.group()
    plus = "+" if number.startswith("+") else ""
    digits = number.removeprefix("+")
    return plus + "*" * (len(digits) - 4) + digits[-4:]


# A query string may carry a credential (Meta's handshake sends hub.verify_token in it):
# access log lines keep the parameters' names, never their values.
_QUERY_VALUE: Final = re.compile(r"=[^&]*")


def _redact_access(record: logging.LogRecord) -> None:
    """Blank the query values of an access log line's path, for every handler alike."""
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, version, status = record.args
        if isinstance(path, str) and "?" in path:
            base, _, query = path.partition("?")
            record.args = (
                client,
                method,
                f"{base}?{_QUERY_VALUE.sub('=*', query)}",
                version,
                status,
            )


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context and extra fields, phone numbers masked in any text among them."""
    _redact_access(record)
    fields: dict[str, Any] = dict(_context.get())
    fields.update(
        (name, value) for name, value in vars(record).items() if name not in _RECORD_ATTRIBUTES
    )
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, version, status = record.args
        fields.update(client=client, method=method, path=path, http_version=version, status=status)
    return {
        name: mask_phone(value) if isinstance(value, str) and name not in _UNMASKED else value
        for name, value in fields.items()
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, event, logger, request_id, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        event = "HTTP request" if record.name == "uvicorn.access" else record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "event": mask_phone(event),
            "logger": record.name,
            "request_id": fields.pop("request_id", None),
        }
        for name in CONTEXT_FIELDS:
            line[name] = fields.pop(name, None)
        line.update(fields)
        if record.exc_info:
            line["exception"] = mask_phone(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = mask_phone(record.exc_text)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a terminal: ``time level logger  event  key=value …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s  %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        _redact_access(record)
        line = mask_phone(super().format(record))
        fields = _fields(record)
        if record.name == "uvicorn.access":
            fields = {"request_id": fields.get("request_id")}
        extras = "  ".join(f"{name}={value}" for name, value in fields.items() if value is not None)
        return f"{line}  {extras}" if extras else line


def logging_config(json: bool | None = None) -> dict[str, Any]:
    """A ``dictConfig`` for the service and uvicorn alike (``uvicorn.run(log_config=...)``).

    ``json``: True for JSON lines, False for text, None to choose: JSON unless stdout is a
    terminal.
    """
    use_json = not sys.stdout.isatty() if json is None else json
    formatter = JsonFormatter if use_json else TextFormatter
    passthrough = {"handlers": [], "propagate": True}  # uvicorn's loggers: through ours
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"whatsorder": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "whatsorder",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": "INFO", "handlers": ["stdout"]},
        "loggers": {
            "uvicorn": {"level": "INFO", **passthrough},
            "uvicorn.error": {"level": "INFO", **passthrough},
            "uvicorn.access": {"level": "INFO", **passthrough},
            "alembic": {"level": "WARNING"},  # readiness checks would log its set-up each time
        },
    }


def configure_logging(json: bool | None = None) -> None:
    """Send every log line (uvicorn's too) to stdout, as JSON lines or text (see above)."""
    logging.config.dictConfig(logging_config(json))


def configure_logging_unless_configured() -> None:
    """``configure_logging()`` for an app served without ``whatsorder serve``.

    Leaves alone a root logger that has handlers already: ``serve`` configured it through
    uvicorn, or a host application or test runner owns logging.
    """
    if not logging.getLogger().handlers:
        configure_logging()
