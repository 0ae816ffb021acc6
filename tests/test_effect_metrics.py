"""Payments and the outbox's replies are counted once each, by what they did."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import FakeGraph
from monitoring import changes, key, scrape
from support import (
    INBOUND_PATH,
    STRIPE_PATH,
    STRIPE_SECRET,
    app_client,
    encode,
    inbound_form,
    reply_text,
    signed_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder.clock import utcnow
from whatsorder.db.outbox import OutboxRepository
from whatsorder.outbox import OutboxSender
from whatsorder.providers import meta

SUGAR_PRICE = 4_800  # paise, from the demo catalogue


async def test_a_payment_event_counts_once_by_what_it_did(
    app_factory: Callable[..., FastAPI],
) -> None:
    async with app_client(app_factory(stripe_webhook_secret=STRIPE_SECRET)) as client:
        before = await scrape(client)
        pairs = inbound_form("ORDER 1 x SUGAR-1KG")
        placed = await client.post(
            INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
        )
        found = re.search(r"ORD-\d+", reply_text(placed))
        assert found is not None, reply_text(placed)
        paid = stripe_body(stripe_event(found.group(), SUGAR_PRICE))
        stray = stripe_body(stripe_event("ORD-999999", SUGAR_PRICE))
        statuses = [
            (await client.post(STRIPE_PATH, content=body, headers=stripe_headers(body)))
            for body in (paid, paid, stray)  # the second: Stripe's retry, replayed
        ]
        after = await scrape(client)

    assert [response.status_code for response in statuses] == [200, 200, 200]
    assert statuses[1].headers["idempotent-replayed"] == "true"
    events = "whatsorder_payment_events_total"
    assert changes(before, after, events) == {
        key(events, provider="stripe", result="credited"): 1,
        key(events, provider="stripe", result="unknown_order"): 1,
    }


async def test_outbox_sends_are_counted_by_outcome(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    fake = FakeGraph()
    now = utcnow()
    async with db.begin() as connection:
        for n in range(2):
            await OutboxRepository(connection).enqueue(
                meta.SOURCE, "919876543210", f"reply {n}", f"reply:metrics-{n}", now
            )
    before = await scrape(client)
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://graph.test") as graph:
        sender = OutboxSender(db, "http://graph.test/v21.0", "token", "1065", client=graph)
        fake.failures = [500]  # the first reply: retried later; the second: sent
        assert await sender.send_due(now) == 1
        fake.failures = [400]  # the first again: refused for good
        assert await sender.send_due(now + timedelta(hours=1)) == 0
    after = await scrape(client)

    sends = "whatsorder_outbox_sends_total"
    assert changes(before, after, sends) == {
        key(sends, outcome="sent"): 1,
        key(sends, outcome="retry"): 1,
        key(sends, outcome="failed"): 1,
    }
