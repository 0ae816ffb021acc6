"""GET /metrics tells exactly what happened, in one process and summed over several workers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from monitoring import changes, key, parse, rules, scrape
from support import (
    INBOUND_PATH,
    app_client,
    encode,
    inbound_form,
    running_server,
    signed_headers,
)
from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db.tables import webhook_idempotency

INBOUND = "twilio_inbound"


async def post(
    client: httpx.AsyncClient, pairs: list[tuple[str, str]], **headers: str
) -> httpx.Response:
    signed = signed_headers(INBOUND_PATH, pairs) | headers
    return await client.post(INBOUND_PATH, content=encode(pairs), headers=signed)


async def test_a_scripted_sequence_is_counted_exactly(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> None:
    app = app_factory(
        rate_limit_per_ip="9/minute", rate_limit_per_sender="3/minute", idempotency_wait_seconds=0
    )
    order_sid = "SM" + "a" * 32
    busy_sid = "SM" + "b" * 32
    async with db.begin() as connection:  # a lease-mode holder is working on this key now
        now = utcnow()
        await connection.execute(
            insert(webhook_idempotency).values(
                webhook_type=INBOUND,
                idempotency_key=busy_sid,
                fingerprint="someone else's",
                status="in_progress",
                epoch=1,
                locked_until=now + timedelta(minutes=1),
                created_at=now,
            )
        )
    async with app_client(app) as client:
        before = await scrape(client)
        script: list[tuple[list[tuple[str, str]], dict[str, str]]] = [
            (inbound_form("ORDER 1 x TOOR-1KG", sid=order_sid), {}),  # new: places an order
            (inbound_form("ORDER 1 x TOOR-1KG", sid=order_sid), {}),  # replayed
            (inbound_form("ORDER 9 x TOOR-1KG", sid=order_sid), {}),  # mismatch
            (inbound_form("MENU"), {"Idempotency-Key": "a b"}),  # invalid key
            (inbound_form("MENU"), {"X-Twilio-Signature": "forged"}),  # wrong signature
            (inbound_form("MENU", sid=busy_sid), {}),  # in flight
            (inbound_form("MENU"), {}),  # new: the sender's 2nd message processed
            (inbound_form("MENU"), {}),  # new: its 3rd
            (inbound_form("MENU"), {}),  # new: its 4th, over its limit: a polite reply
            (inbound_form("MENU"), {}),  # the 10th from 127.0.0.1: 429 before anything
        ]
        statuses = [(await post(client, pairs, **headers)).status_code for pairs, headers in script]
        after = await scrape(client)

    assert statuses == [200, 200, 422, 400, 403, 409, 200, 200, 200, 429]
    outcomes = "whatsorder_idempotency_outcomes_total"
    requests = "whatsorder_webhook_requests_total"
    route = INBOUND_PATH
    assert changes(before, after, "whatsorder_idempotency_outcomes_total") == {
        key(outcomes, webhook_type=INBOUND, outcome="new"): 4,
        key(outcomes, webhook_type=INBOUND, outcome="replayed"): 1,
        key(outcomes, webhook_type=INBOUND, outcome="mismatch"): 1,
        key(outcomes, webhook_type=INBOUND, outcome="invalid_key"): 1,
        key(outcomes, webhook_type=INBOUND, outcome="in_flight"): 1,
    }
    assert changes(before, after, requests) == {
        key(requests, provider="twilio", route=route, status="200"): 5,
        key(requests, provider="twilio", route=route, status="422"): 1,
        key(requests, provider="twilio", route=route, status="400"): 1,
        key(requests, provider="twilio", route=route, status="403"): 1,
        key(requests, provider="twilio", route=route, status="409"): 1,
        key(requests, provider="twilio", route=route, status="429"): 1,
    }
    assert changes(before, after, "whatsorder_signature_failures_total") == {
        key("whatsorder_signature_failures_total", provider="twilio", reason="invalid"): 1
    }
    assert changes(before, after, "whatsorder_rate_limited_total") == {
        key("whatsorder_rate_limited_total", kind="ip"): 1,
        key("whatsorder_rate_limited_total", kind="sender"): 1,
    }
    assert changes(before, after, "whatsorder_orders_created_total") == {
        key("whatsorder_orders_created_total", source="twilio"): 1
    }
    # Every decision the engine made was timed: 4 new, a replay, a mismatch, a conflict.
    lookups = changes(before, after, "whatsorder_idempotency_lookup_seconds_count")
    assert lookups == {key("whatsorder_idempotency_lookup_seconds_count", webhook_type=INBOUND): 7}


async def test_metrics_is_prometheus_text_and_listed_in_openapi(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE whatsorder_idempotency_outcomes_total counter" in response.text
    assert "/metrics" in (await client.get("/openapi.json")).json()["paths"]


@dataclass(frozen=True)
class Report:
    outcome: str
    rows_deleted: int
    stale_removed: int
    seconds: float


async def test_cleanup_runs_and_record_counts_are_published(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    observability.record_cleanup(Report("completed", 1500, 2, 3.5))
    observability.record_cleanup(Report("failed", 0, 0, 0.25))
    observability.record_cleanup(Report("skipped", 0, 0, 0.0))
    observability.set_record_counts({"completed": 42}, expired=7)
    after = await scrape(client)

    runs = "whatsorder_cleanup_runs_total"
    deleted = "whatsorder_cleanup_rows_deleted_total"
    assert changes(before, after, runs) | changes(before, after, deleted) == {
        key(runs, outcome="completed"): 1,
        key(runs, outcome="failed"): 1,
        key(runs, outcome="skipped"): 1,
        key(deleted, kind="expired"): 1500,
        key(deleted, kind="stale"): 2,
    }
    duration = changes(before, after, "whatsorder_cleanup_duration_seconds_")
    assert duration[key("whatsorder_cleanup_duration_seconds_count")] == 2  # skipped: not timed
    assert duration[key("whatsorder_cleanup_duration_seconds_sum")] == pytest.approx(3.75)
    last_success = after[key("whatsorder_cleanup_last_success_timestamp_seconds")]
    assert time.time() - 60 < last_success <= time.time()
    assert after[key("whatsorder_idempotency_records", status="completed")] == 42
    assert after[key("whatsorder_idempotency_records", status="in_progress")] == 0
    assert after[key("whatsorder_idempotency_expired_records")] == 7


async def test_every_rule_is_complete_and_uses_only_metrics_we_expose(
    client: httpx.AsyncClient,
) -> None:
    await post(client, inbound_form("MENU"))  # labelled series appear once used
    await post(client, inbound_form("MENU"), **{"X-Twilio-Signature": "forged"})
    exposed = {name for name, _labels in await scrape(client)}

    alerts = [rule for rule in rules() if "alert" in rule]
    assert {rule["alert"] for rule in alerts} >= {
        "WhatsorderCleanupFailing",
        "WhatsorderCleanupNotSucceeding",
        "WhatsorderIdempotencyTableLarge",
        "WhatsorderIdempotencyLookupSlow",
        "WhatsorderWebhookErrorRate",
        "WhatsorderSignatureFailureSpike",
    }
    for rule in alerts:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
    for rule in rules():  # recording rules too: the SLO ratios read the raw series
        name = rule.get("alert") or rule["record"]
        used = set(re.findall(r"\bwhatsorder_[a-z_]+", rule["expr"]))
        # The SLO alerts read only recorded ratios (whatsorder:…), checked as recording rules.
        assert used or "whatsorder:" in rule["expr"], name
        assert used <= exposed, f"{name} uses {used - exposed}, not in /metrics"


@pytest.mark.slow
def test_several_workers_add_up_to_exactly_the_requests_sent(
    database_url: str, tmp_path: Path
) -> None:
    sent = 12
    new = key("whatsorder_idempotency_outcomes_total", webhook_type=INBOUND, outcome="new")
    requests = key(
        "whatsorder_webhook_requests_total", provider="twilio", route=INBOUND_PATH, status="200"
    )

    async def send_all(base_url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            responses = await asyncio.gather(
                *(post(http, inbound_form("MENU")) for _ in range(sent))
            )
        return [response.status_code for response in responses]

    with running_server(database_url, tmp_path / "server.log", workers=2) as server:
        assert asyncio.run(send_all(server.base_url)) == [200] * sent
        scrapes = []
        for _ in range(6):  # any worker may answer; each must see every worker's counts
            with httpx.Client(base_url=server.base_url, timeout=10) as http:
                response = http.get("/metrics")
            assert response.status_code == 200
            scrapes.append(parse(response.text))

    # Rendered from the workers' files (the default registry would show this process's gc).
    assert not any(name.startswith("python_gc") for samples in scrapes for name, _ in samples)
    assert [samples[new] for samples in scrapes] == [sent] * len(scrapes), server.log()
    assert [samples[requests] for samples in scrapes] == [sent] * len(scrapes)
