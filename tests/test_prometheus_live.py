"""A real Prometheus, with the shipped rules, scraping a real two-worker whatsorder.

What an operator deploys is what runs here: Debian's ``prometheus`` reads ``/metrics`` every
second and evaluates ``deploy/prometheus/*.yml`` as often. Real signed webhooks go in; the test
reads Prometheus's HTTP API and finds each one counted once, every dashboard query answered,
and the signature alert pending after a burst of forged requests while every other alert stays
quiet.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fake_graph import FakeGraph, serving
from monitoring import Prometheus, panel_queries, running_prometheus, series_names
from support import (
    ADMIN_TOKEN,
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    META_SENDER,
    STRIPE_PATH,
    STRIPE_SECRET,
    encode,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_text_message,
    new_sid,
    reply_text,
    running_server,
    signed_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
)

pytestmark = pytest.mark.slow
RENDER = Path(__file__).parent.parent / "deploy" / "grafana" / "render.py"
# Set to a directory, the test also draws the dashboards there after a few minutes of traffic
# (docs/monitoring/*.png; needs matplotlib): WHATSORDER_DASHBOARD_PICTURES=docs/monitoring
PICTURES = os.environ.get("WHATSORDER_DASHBOARD_PICTURES")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SKU, PRICE = "SUGAR-1KG", 4_800  # from the demo catalogue; PRICE in paise
# For the pictures, keys expire after a minute and cleanup runs every minute: its panels get data.
PICTURE_SETTINGS = (
    {"WHATSORDER_IDEMPOTENCY_TTL_SECONDS": "60", "WHATSORDER_CLEANUP_SCHEDULE": "* * * * *"}
    if PICTURES
    else {}
)


def post(http: httpx.Client, pairs: list[tuple[str, str]], *, forged: bool = False) -> int:
    headers = signed_headers(INBOUND_PATH, pairs)
    if forged:
        headers["X-Twilio-Signature"] = "forged"
    return http.post(INBOUND_PATH, content=encode(pairs), headers=headers).status_code


def post_meta(http: httpx.Client, text: str, sender: str = META_SENDER) -> int:
    body = meta_delivery([meta_text_message(text, sender=sender)])
    return http.post(META_PATH, content=body, headers=meta_headers(body)).status_code


def pay(http: httpx.Client, number: str) -> int:
    """Stripe's word that the order ``number`` (one of SKU) is paid."""
    body = stripe_body(stripe_event(number, PRICE, payment_id=f"pi_{secrets.token_hex(12)}"))
    return http.post(STRIPE_PATH, content=body, headers=stripe_headers(body)).status_code


def total(prometheus: Prometheus, selector: str) -> float | None:
    """A counter summed over both workers, as Prometheus last scraped it."""
    return prometheus.value(f"sum({selector})")


def test_prometheus_counts_real_webhooks_and_raises_the_signature_alert(
    sqlite_template: Path, tmp_path: Path
) -> None:
    database = tmp_path / "whatsorder.db"
    shutil.copyfile(sqlite_template, database)
    graph = FakeGraph()  # Meta's Graph API, for the replies the outbox sends
    with (
        serving(graph.app) as graph_url,
        running_server(
            f"sqlite:///{database}",
            tmp_path / "server.log",
            workers=2,
            WHATSORDER_RATE_LIMIT_PER_SENDER="5/minute",
            WHATSORDER_META_APP_SECRET=META_APP_SECRET,
            WHATSORDER_META_ACCESS_TOKEN="graph-access-token",
            WHATSORDER_META_PHONE_NUMBER_ID="106540352242922",
            WHATSORDER_META_GRAPH_URL=f"{graph_url}/v21.0",
            WHATSORDER_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
            **PICTURE_SETTINGS,
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
        order = inbound_form(f"ORDER 1 x {SKU}", sid=order_sid)
        sent = [
            post(http, order),  # new: an order
            post(http, inbound_form("MENU")),  # new
            post(http, order),  # replayed
            post(http, order),  # replayed
            post(http, inbound_form(f"ORDER 5 x {SKU}", sid=order_sid)),  # mismatch
        ]
        chatty = "whatsapp:+919800000001"  # six messages: the sixth politely refused, no effect
        sent += [post(http, inbound_form("MENU", sender=chatty)) for _ in range(6)]
        assert sent == [200, 200, 200, 200, 422] + [200] * 6
        assert post_meta(http, "MENU") == 200  # its reply goes out through the outbox
        [placed] = http.get("/api/v1/admin/orders", headers=ADMIN).json()["orders"]
        assert pay(http, placed["number"]) == 200
        # An operator's look at the statistics publishes the table's counts (keys in flight).
        stats = http.get("/api/v1/admin/idempotency/stats", headers=ADMIN)
        assert stats.status_code == 200

        outcomes = 'whatsorder_idempotency_outcomes_total{webhook_type="twilio_inbound", outcome='
        twilio = 'whatsorder_webhook_requests_total{provider="twilio", status='
        expected = {
            f'{outcomes}"new"}}': 9,
            f'{outcomes}"replayed"}}': 2,
            f'{outcomes}"mismatch"}}': 1,
            f'{twilio}"200"}}': 11,
            f'{twilio}"422"}}': 1,
            f'{twilio}"403"}}': 1,
            'whatsorder_webhook_requests_total{provider="meta", status="200"}': 1,
            'whatsorder_signature_failures_total{provider="twilio", reason="invalid"}': 1,
            'whatsorder_orders_created_total{source="twilio"}': 1,
            'whatsorder_rate_limited_total{kind="sender"}': 1,
            'whatsorder_outbox_sends_total{outcome="sent"}': 1,  # the reply to Meta's MENU
            'whatsorder_payment_events_total{provider="stripe", result="credited"}': 1,
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
        [p99_query] = [q for q in queries if q.panel.startswith("Latency") and q.legend == "p99"]
        p99 = prometheus.value(p99_query.promql("1m"))
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

        if PICTURES:
            traffic_for_pictures(http, graph, seconds=240)
            options = ["--out", PICTURES, "--minutes", "4", "--rate-interval", "15s"]
            subprocess.run(
                [sys.executable, str(RENDER), "--prometheus", prometheus.base_url, *options],
                check=True,
                timeout=120,
            )


def traffic_for_pictures(http: httpx.Client, graph: FakeGraph, seconds: float) -> None:
    """A few webhooks a second from many senders: new messages and orders (half of them
    paid), replays, now and then a mismatch and a forged request, Meta messages whose replies
    the Graph API now and then refuses; the statistics read every ten seconds or so."""
    deadline = time.monotonic() + seconds
    orders: list[list[tuple[str, str]]] = []
    for n in itertools.count():
        if time.monotonic() > deadline:
            return
        sender = f"whatsapp:+9198{n % 300:08d}"
        if n % 7 == 0:
            pairs = inbound_form(f"ORDER 1 x {SKU}", sender=sender)
            orders.append(pairs)
            headers = signed_headers(INBOUND_PATH, pairs)
            answer = http.post(INBOUND_PATH, content=encode(pairs), headers=headers)
            placed = re.search(r"ORD-\d+", reply_text(answer))
            if placed and n % 14 == 0:  # every other order is paid
                pay(http, placed.group())
        else:
            post(http, inbound_form("MENU", sender=sender))
        if orders and n % 3 == 0:
            post(http, orders[n % len(orders)])  # a provider's retry
        if orders and n % 41 == 0:
            sid = dict(orders[-1])["MessageSid"]
            post(http, inbound_form(f"ORDER 2 x {SKU}", sid=sid, sender=sender))  # mismatch
        if n % 23 == 0:
            post(http, inbound_form("MENU"), forged=True)
        if n % 5 == 0:
            post_meta(http, "MENU", sender=f"9197{n % 300:08d}")
        if n % 120 == 60:
            graph.failures += [503, 503, 400]  # two attempts to retry, one reply given up
        if n % 40 == 0:
            http.get("/api/v1/admin/idempotency/stats", headers=ADMIN)
        time.sleep(0.15)
