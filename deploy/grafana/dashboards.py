"""whatsorder's Grafana dashboards, written as code and kept as JSON beside this file.

Run ``python deploy/grafana/dashboards.py`` after changing a panel: it rewrites
``deploy/grafana/dashboards/*.json``, which Grafana loads through the file provisioning in
``deploy/grafana/provisioning/``. A test fails when the JSON and this module disagree, when a
query names a series the service does not export, or when Prometheus cannot parse it.

Gauges every replica reports alike (the table's counts, the last cleanup, the outbox's backlog)
are aggregated with ``max``, never summed; counters are summed over workers and replicas.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

from grafana_json import RATE, Dashboard, Panel, Query, dashboard_json, quantile, rate

HERE: Final = Path(__file__).parent
DASHBOARD_DIR: Final = HERE / "dashboards"
OVERVIEW = Dashboard(
    uid="whatsorder-overview",
    title="whatsorder / overview",
    description="Webhooks in, what the idempotency engine decided, errors, latency and orders.",
    panels=(
        Panel(
            "Webhooks answered, by provider and status",
            "Every webhook answer. 401 and 403 are signature refusals, 429 the per-IP limit.",
            (
                Query(
                    rate("whatsorder_webhook_requests_total", "provider, status"),
                    "{{provider}} {{status}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Processed and replayed",
            "new: processed for the first time (takeover: after a crashed holder). replayed: a "
            "provider's retry answered from the stored response, with no second effect.",
            (
                Query(
                    rate(
                        'whatsorder_idempotency_outcomes_total{outcome=~"new|takeover|replayed"}',
                        "outcome",
                    ),
                    "{{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Conflicts and mismatches",
            "in_flight: a duplicate waited past its limit for the first copy (409). mismatch: a "
            "key reused with another body (422). invalid_key: a malformed client key (400).",
            (
                Query(
                    rate(
                        'whatsorder_idempotency_outcomes_total{outcome=~"in_flight|mismatch|invalid_key"}',
                        "webhook_type, outcome",
                    ),
                    "{{webhook_type}} {{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Refusals",
            "Signature failures (missing or wrong) by provider, and requests over a rate limit: "
            "ip is refused with 429, sender gets a polite reply and no order.",
            (
                Query(
                    rate("whatsorder_signature_failures_total", "provider, reason"),
                    "signature {{provider}} {{reason}}",
                ),
                Query(rate("whatsorder_rate_limited_total", "kind"), "rate limit {{kind}}"),
            ),
            unit="reqps",
        ),
        Panel(
            "5xx ratio against the availability SLO",
            "Share of signed webhooks answered 5xx (the SLO: at most 0.1% over 30 days), over "
            "5 min and 1 h, from the recording rules in deploy/prometheus/slo.yml.",
            (
                Query("whatsorder:webhook_errors:ratio_rate5m", "5 min"),
                Query("whatsorder:webhook_errors:ratio_rate1h", "1 h"),
                Query("vector(0.001)", "objective"),
            ),
            unit="percentunit",
        ),
        Panel(
            "Slower than 1 s, against the latency SLO",
            "Share of webhooks decided in more than 1 s (the SLO: at most 1% over 30 days).",
            (
                Query("whatsorder:webhook_slow:ratio_rate5m", "5 min"),
                Query("whatsorder:webhook_slow:ratio_rate1h", "1 h"),
                Query("vector(0.01)", "objective"),
            ),
            unit="percentunit",
        ),
        Panel(
            "Latency, claim to answer",
            "p50 and p99 of the time from the idempotency claim to the answer, handler included.",
            (
                Query(quantile(0.5, "whatsorder_idempotency_duration_seconds"), "p50"),
                Query(quantile(0.99, "whatsorder_idempotency_duration_seconds"), "p99"),
            ),
            unit="s",
        ),
        Panel(
            "Orders created",
            "Orders placed, by the channel they came in on; a replay never counts twice.",
            (Query(rate("whatsorder_orders_created_total", "source"), "{{source}}"),),
            unit="ops",
        ),
        Panel(
            "Payment events applied",
            "What each payment event did: credited (a payment recorded), reversed, mismatch "
            "(amount or currency), unknown_order, …; a provider's retry is replayed, not counted.",
            (
                Query(
                    rate("whatsorder_payment_events_total", "provider, result"),
                    "{{provider}} {{result}}",
                ),
            ),
            unit="ops",
        ),
    ),
)

IDEMPOTENCY = Dashboard(
    uid="whatsorder-idempotency",
    title="whatsorder / idempotency engine",
    description="Decisions, claim latency, keys in flight, the table's size and its cleanup.",
    panels=(
        Panel(
            "Decisions, by outcome",
            "Every decision of the engine. store_busy, store_unavailable and handler_error are "
            "errors: nothing was stored and the provider retries.",
            (Query(rate("whatsorder_idempotency_outcomes_total", "outcome"), "{{outcome}}"),),
            unit="reqps",
        ),
        Panel(
            "Lookup and claim latency, p99",
            "Time to claim a key or find its record, per webhook type (the alert: over 100 ms).",
            (
                Query(
                    quantile(0.99, "whatsorder_idempotency_lookup_seconds", "webhook_type"),
                    "p99 {{webhook_type}}",
                ),
                Query(quantile(0.5, "whatsorder_idempotency_lookup_seconds"), "p50 all"),
            ),
            unit="s",
        ),
        Panel(
            "Claim to answer, p99 by outcome",
            "A replay should take a few milliseconds; new includes the handler's work.",
            (
                Query(
                    quantile(0.99, "whatsorder_idempotency_duration_seconds", "outcome"),
                    "{{outcome}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Keys in flight",
            "Claims being processed now, as of the last count (statistics or cleanup).",
            (Query('max(whatsorder_idempotency_records{status="in_progress"})', "in progress"),),
            kind="stat",
            width=6,
        ),
        Panel(
            "Expired, awaiting cleanup",
            "Records past their TTL that the next cleanup deletes (the alert: over a million).",
            (Query("max(whatsorder_idempotency_expired_records)", "expired"),),
            kind="stat",
            width=6,
        ),
        Panel(
            "Records by status",
            "The idempotency table's rows, as of the last count.",
            (Query("max by (status) (whatsorder_idempotency_records)", "{{status}}"),),
        ),
        Panel(
            "Cleanup runs",
            "Runs per hour by outcome: skipped means another replica held the cleanup lock.",
            (
                Query(
                    "sum by (outcome) (increase(whatsorder_cleanup_runs_total[1h]))", "{{outcome}}"
                ),
            ),
        ),
        Panel(
            "Rows deleted by cleanup",
            "expired: records past their TTL. stale: claims whose lease died long ago.",
            (Query(rate("whatsorder_cleanup_rows_deleted_total", "kind"), "{{kind}}"),),
            unit="rowsps",
        ),
        Panel(
            "Cleanup duration",
            "Mean time of a run over the last hour, and when the last one succeeded.",
            (
                Query(
                    "sum(rate(whatsorder_cleanup_duration_seconds_sum[1h]))"
                    " / sum(rate(whatsorder_cleanup_duration_seconds_count[1h]))",
                    "mean run",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Last successful cleanup",
            "0 (shown as 1970) until the first run since the service started.",
            (
                Query(
                    "max(whatsorder_cleanup_last_success_timestamp_seconds) * 1000", "last success"
                ),
            ),
            unit="dateTimeFromNow",
            kind="stat",
        ),
    ),
)

DELIVERY = Dashboard(
    uid="whatsorder-delivery",
    title="whatsorder / delivery",
    description="Replies to Meta customers sent from the outbox through the Graph API, and "
    "the replies still waiting.",
    panels=(
        Panel(
            "Replies sent, by outcome",
            "sent: the Graph API took it. retry: it failed and is sent again later, with the same "
            "Idempotency-Key. failed: refused for good or out of attempts; the customer got no "
            "reply (the row and its last error stay in outbox_messages).",
            (Query(rate("whatsorder_outbox_sends_total", "outcome"), "{{outcome}}"),),
            unit="ops",
        ),
        Panel(
            "Share of sends that failed",
            "Failed attempts (retried or final) among all attempts.",
            (
                Query(
                    'sum(rate(whatsorder_outbox_sends_total{outcome=~"retry|failed"}['
                    + RATE
                    + "]))"
                    " / sum(rate(whatsorder_outbox_sends_total[" + RATE + "]))",
                    "failed attempts",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Replies waiting to be sent",
            "Replies in the outbox not yet sent nor given up, due or waiting for a retry, as the "
            "sender counted them in its last round. Without WHATSORDER_META_ACCESS_TOKEN nothing "
            "is sent and this only grows.",
            (Query("max by (provider) (whatsorder_outbox_pending_messages)", "{{provider}}"),),
        ),
        Panel(
            "Oldest pending reply",
            "How long the oldest reply still pending has waited since it was queued: how late "
            "the latest answer to a customer is. Retries give a reply up within about 12 min; "
            "the alert fires past 15 min (for 5 min).",
            (
                Query(
                    "max by (provider) (whatsorder_outbox_oldest_pending_age_seconds)",
                    "{{provider}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Replies given up in the last hour",
            "Replies no retry will send: a customer is waiting for an answer.",
            (
                Query(
                    'sum(increase(whatsorder_outbox_sends_total{outcome="failed"}[1h]))', "given up"
                ),
            ),
            kind="stat",
            width=6,
        ),
    ),
)

DASHBOARDS: Final = (OVERVIEW, IDEMPOTENCY, DELIVERY)


def rendered() -> dict[Path, str]:
    """Each dashboard's file and its exact text (sorted keys, so diffs stay small)."""
    return {
        DASHBOARD_DIR / f"{d.uid.removeprefix('whatsorder-')}.json": json.dumps(
            dashboard_json(d), indent=2, sort_keys=True
        )
        + "\n"
        for d in DASHBOARDS
    }


if __name__ == "__main__":
    DASHBOARD_DIR.mkdir(exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
        sys.stdout.write(f"wrote {path.relative_to(HERE.parent.parent)}\n")
