"""A real Prometheus, with the shipped rules, scraping a real two-worker whatsorder.

What an operator deploys is what runs here: Debian's ``prometheus`` reads ``/metrics`` every
second and evaluates ``deploy/prometheus/*.yml`` as often. Real signed webhooks go in; the test
reads Prometheus's HTTP API and finds each one counted once, every dashboard query answered,
and the signature alert pending after a burst of forged requests while every other alert stays
quiet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from monitoring import Prometheus, panel_queries, running_prometheus, series_names
from support import (
    ADMIN_TOKEN,
    INBOUND_PATH,
    encode,
    inbound_form,
    new_sid,
    running_server,
    signed_headers,
)

pytestmark = pytest.mark.slow


def post(http: httpx.Client, pairs: list[tuple[str, str]], *, forged: bool = False) -> int:
    headers = signed_headers(INBOUND_PATH, pairs)
    if forged:
        headers["X-Twilio-Signature"] = "forged"
    return http.post(INBOUND_PATH, content=encode(pairs), headers=headers).status_code


def total(prometheus: Prometheus, selector: str) -> float | None:
    """A counter summed over both workers, as Prometheus last scraped it."""
    return prometheus.value(f"sum({selector})")


def test_prometheus_counts_real_webhooks_and_raises_the_signature_alert(
    sqlite_template: Path, tmp_path: Path
) -> None:
    database = tmp_path / "whatsorder.db"
    shutil.copyfile(sqlite_template, database)
    with (
        running_server(
            f"sqlite:///{database}",
            tmp_path / "server.log",
            workers=2,
            WHATSORDER_RATE_LIMIT_PER_SENDER="5/minute",
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as http,
        running_prometheus(tmp_path, server.base_url.removeprefix("http://")) as prometheus,
    ):
        prometheus.eventually("a first scrape", lambda: prometheus.value("up") == 1)
        # Prometheus counts a counter's increase from its first scrape on: a series born with
        # the first webhook of its kind is scraped once before the rest of the traffic.
        assert post(http, inbound_form("MENU")) == 200
        assert post(http, inbound_form("MENU"), forged=True) == 403
        prometheus.eventually(
            "the first webhooks scraped",
            lambda: total(prometheus, "whatsorder_webhook_requests_total") == 2,
        )
        order_sid = new_sid()
        order = inbound_form("ORDER 1 x TOOR-1KG", sid=order_sid)
        sent = [
            post(http, order),  # new: an order
            post(http, inbound_form("MENU")),  # new
            post(http, order),  # replayed
            post(http, order),  # replayed
            post(http, inbound_form("ORDER 5 x TOOR-1KG", sid=order_sid)),  # mismatch
        ]
        chatty = "whatsapp:+919800000001"  # six messages: the sixth politely refused, no effect
        sent += [post(http, inbound_form("MENU", sender=chatty)) for _ in range(6)]
        assert sent == [200, 200, 200, 200, 422] + [200] * 6
        # An operator's look at the statistics publishes the table's counts (keys in flight).
        stats = http.get(
            "/api/v1/admin/idempotency/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert stats.status_code == 200

        outcomes = "whatsorder_idempotency_outcomes_total"
        expected = {
            f'{outcomes}{{outcome="new"}}': 9,
            f'{outcomes}{{outcome="replayed"}}': 2,
            f'{outcomes}{{outcome="mismatch"}}': 1,
            'whatsorder_webhook_requests_total{status="200"}': 11,
            'whatsorder_webhook_requests_total{status="422"}': 1,
            'whatsorder_webhook_requests_total{status="403"}': 1,
            'whatsorder_signature_failures_total{provider="twilio", reason="invalid"}': 1,
            'whatsorder_orders_created_total{source="twilio"}': 1,
            'whatsorder_rate_limited_total{kind="sender"}': 1,
            'whatsorder_idempotency_records{status="completed"}': 9,
        }

        def counted() -> bool:
            return all(total(prometheus, s) == n for s, n in expected.items())

        prometheus.eventually("every webhook counted once", counted)

        # Every series a dashboard reads is one the real service exports over both workers...
        exported = {
            line.split("{")[0].split(" ")[0] for line in http.get("/metrics").text.splitlines()
        }
        queries = panel_queries()
        for query in queries:
            raw = {name for name in series_names(query.expr) if ":" not in name}
            assert raw <= exported, f"{query.panel}: {raw - exported} not in /metrics"

        # ...and every query, recorded SLO ratios included, answers with data.
        def answered() -> list[str]:
            return [q.panel for q in queries if not prometheus.query(q.promql("10s"))]

        prometheus.eventually("every dashboard query answers", lambda: not answered())
        # Signed webhooks and no 5xx: the ratios are 0, not "no data" (the 403 is left out).
        assert prometheus.value("whatsorder:webhook_errors:ratio_rate5m") == 0
        assert prometheus.value("whatsorder:webhook_slow:ratio_rate5m") == 0
        p99 = prometheus.value(next(q for q in queries if "p99" in q.legend).promql("1m"))
        assert p99 is not None
        assert 0 < p99 < 1

        # A burst of forged requests: the signature alert goes pending (it fires after 5 min).
        assert {post(http, inbound_form("MENU"), forged=True) for _ in range(60)} == {403}

        def spike_pending() -> bool:
            return any(
                alert["labels"]["alertname"] == "WhatsorderSignatureFailureSpike"
                and alert["labels"]["provider"] == "twilio"
                and alert["state"] == "pending"
                for alert in prometheus.alerts()
            )

        prometheus.eventually("the signature alert pending", spike_pending)
        active = {alert["labels"]["alertname"] for alert in prometheus.alerts()}
        assert active == {"WhatsorderSignatureFailureSpike"}, "an alert without cause"
