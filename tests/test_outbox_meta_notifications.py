"""Notifications through Meta's Graph API: text inside the 24-hour window, the approved
template outside it, and Meta's refusals held instead of retried: 131050 (the customer stopped
marketing messages) noted once in the consent ledger, 131047 (the window closed). The fake
Graph API is served on 127.0.0.1. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import FakeGraph, serving
from outbox_support import PARAMS, TEMPLATES, consent_ledger, customer, opted_out_at, queue, row
from support import META_SENDER
from whatsorder.clock import utcnow
from whatsorder.outbound.templates import parse_templates
from whatsorder.outbox import OutboxSender

ACCESS_TOKEN = "test-graph-access-token"
PHONE_NUMBER_ID = "106540352242922"
DISPATCHED = "Your order ORD-000042 is on its way."


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, str]]:
    fake = FakeGraph()
    with serving(fake.app) as base_url:
        yield fake, base_url


@pytest.fixture
async def sender(db: AsyncEngine, graph: tuple[FakeGraph, str]) -> AsyncIterator[OutboxSender]:
    async with OutboxSender(
        db,
        f"{graph[1]}/v21.0",
        ACCESS_TOKEN,
        PHONE_NUMBER_ID,
        templates=parse_templates(TEMPLATES),
    ) as made:
        yield made


async def test_inside_the_window_a_notification_is_a_text_message(
    db: AsyncEngine, graph: tuple[FakeGraph, str], sender: OutboxSender
) -> None:
    fake, _ = graph
    await customer(db, META_SENDER, last_inbound_at=utcnow() - timedelta(hours=2))
    key = await queue(db, "meta", META_SENDER, DISPATCHED, params=PARAMS)

    assert await sender.send_due() == 1

    [send] = fake.delivered
    assert send.idempotency_key == key
    assert send.payload["type"] == "text"
    assert send.payload["text"]["body"] == DISPATCHED
    assert (await row(db, key))["sent_as"] == "text"


async def test_outside_the_window_a_notification_is_the_approved_template(
    db: AsyncEngine, graph: tuple[FakeGraph, str], sender: OutboxSender
) -> None:
    fake, _ = graph
    await customer(db, META_SENDER, last_inbound_at=utcnow() - timedelta(hours=30))
    key = await queue(db, "meta", META_SENDER, DISPATCHED, language="hi", params=PARAMS)

    assert await sender.send_due() == 1

    [send] = fake.delivered
    assert send.payload == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": META_SENDER,
        "type": "template",
        "template": {
            "name": "order_dispatched_hi",
            "language": {"code": "hi"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "ORD-000042"},
                        {"type": "text", "text": "₹690.00"},
                    ],
                }
            ],
        },
    }
    sent = await row(db, key)
    assert (sent["status"], sent["sent_as"], sent["provider_message_id"]) == (
        "sent",
        "template",
        "wamid.fake-1",
    )


async def test_meta_131050_records_the_customers_stop_once_and_holds_the_message(
    db: AsyncEngine, graph: tuple[FakeGraph, str], sender: OutboxSender
) -> None:
    fake, _ = graph
    retailer_id = await customer(db, META_SENDER, last_inbound_at=utcnow())
    refused = await queue(db, "meta", META_SENDER, DISPATCHED, params=PARAMS)
    fake.failures = [(400, 131050)]

    assert await sender.send_due() == 0
    later = await queue(db, "meta", META_SENDER, "Delivered.", event="delivered")
    reply = await queue(db, "meta", META_SENDER, "Order ORD-000044 placed", proactive=False)
    assert await sender.send_due(utcnow() + timedelta(hours=1)) == 1  # the reply only

    held = await row(db, refused)
    assert (held["status"], held["attempts"], held["sends"]) == ("held", 1, 0)
    assert "131050" in held["held_reason"]
    [stop] = await consent_ledger(db, retailer_id)
    assert (stop["change"], stop["source"], stop["source_ref"]) == (
        "stop",
        "meta_send_error",
        refused,
    )
    assert await opted_out_at(db, retailer_id) is not None
    assert (await row(db, later))["status"] == "held"
    assert (await row(db, reply))["status"] == "sent"
    assert [send.idempotency_key for send in fake.sends] == [refused, reply]


async def test_meta_131047_holds_the_message_instead_of_retrying_it(
    db: AsyncEngine, graph: tuple[FakeGraph, str], sender: OutboxSender
) -> None:
    fake, _ = graph
    retailer_id = await customer(db, META_SENDER, last_inbound_at=utcnow())
    key = await queue(db, "meta", META_SENDER, DISPATCHED, params=PARAMS)
    fake.failures = [(400, 131047)]

    assert await sender.send_due() == 0
    assert await sender.send_due(utcnow() + timedelta(days=1)) == 0

    held = await row(db, key)
    assert held["status"] == "held"
    assert held["held_reason"] == (
        "the provider refused text outside the 24-hour window: "
        "HTTP 400 (131047: (#131047) Re-engagement message)"
    )
    assert len(fake.sends) == 1
    assert await consent_ledger(db, retailer_id) == []
