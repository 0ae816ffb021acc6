"""The audit sees each defect the hostile tester found, put back by hand into books that were
clean: a refund never posted, money out for a refund that never happened, an answer naming
another retailer's order, a dead letter kept twice, a reply accepted twice.

(A 500, a deadlock or a refused fallback retry leave no row behind; the front-door tests in
test_hostile_provider.py hold those.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    RAZORPAY_PATH,
    RAZORPAY_SECRET,
    STRIPE_PATH,
    STRIPE_SECRET,
    app_client,
    encode,
    inbound_form,
    meta_headers,
    new_razorpay_event_id,
    razorpay_event,
    razorpay_headers,
    reply_text,
    signed_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder.db import reports
from whatsorder.db.outbox import OutboxRepository
from whatsorder.db.tables import (
    dead_letters,
    ledger_entries,
    orders,
    retailers,
    webhook_idempotency,
)
from whatsorder_idempotency.record import utcnow

TOTAL = 3 * 4_800  # ORDER 3 x SUGAR-1KG
Corruption = Callable[[AsyncConnection, str], Awaitable[None]]


async def _books_with_every_kind_of_row(client: httpx.AsyncClient) -> str:
    """Orders paid and partly or wholly refunded by both providers, a refund that failed, a
    message from a second sender, a dead letter: clean books. Returns the Stripe order."""

    async def order(sender: str = "whatsapp:+919876543210") -> str:
        pairs = inbound_form("ORDER 3 x SUGAR-1KG", sender=sender)
        answer = await client.post(
            INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
        )
        return reply_text(answer).split()[1]

    async def stripe(event: dict[str, object]) -> None:
        body = stripe_body(event)
        answer = await client.post(STRIPE_PATH, content=body, headers=stripe_headers(body))
        assert answer.status_code == 200, answer.text

    async def razorpay(body: bytes) -> None:
        headers = razorpay_headers(body, new_razorpay_event_id())
        answer = await client.post(RAZORPAY_PATH, content=body, headers=headers)
        assert answer.status_code == 200, answer.text

    by_stripe = await order()
    await stripe(stripe_event(by_stripe, TOTAL, payment_id="pi_books"))
    for refunded in (TOTAL // 3, TOTAL):
        await stripe(
            stripe_event(by_stripe, refunded, event_type="charge.refunded", payment_id="pi_books")
        )
    by_razorpay = await order()
    await razorpay(razorpay_event(by_razorpay, TOTAL, payment_id="pay_books"))
    for event in ("refund.created", "refund.failed"):
        await razorpay(
            razorpay_event(
                by_razorpay, TOTAL, event=event, payment_id="pay_books", refund_id="rfnd_failed"
            )
        )
    await order(sender="whatsapp:+919812345678")
    unreadable = b"{not json"
    answer = await client.post(META_PATH, content=unreadable, headers=meta_headers(unreadable))
    assert answer.status_code == 200, answer.text
    return by_stripe


async def _second_refund_dropped(connection: AsyncConnection, number: str) -> None:
    """Defect 1: the second (cumulative) Stripe refund answered "already reversed"."""
    last = select(ledger_entries.c.id).where(ledger_entries.c.payment_ref == "pi_books")
    newest = await connection.scalar(last.order_by(ledger_entries.c.id.desc()).limit(1))
    await connection.execute(delete(ledger_entries).where(ledger_entries.c.id == newest))
    await connection.execute(
        update(orders).where(orders.c.id == int(number[4:])).values(status="paid")
    )


async def _created_refund_taken_as_money_out(connection: AsyncConnection, _: str) -> None:
    """Defect 2: refund.created posted a full reversal and refund.failed left it there."""
    row = (
        await connection.execute(
            select(ledger_entries).where(
                ledger_entries.c.payment_ref == "pay_books",
                ledger_entries.c.entry_type == "payment_credit",
            )
        )
    ).one()
    await connection.execute(
        insert(ledger_entries).values(
            retailer_id=row.retailer_id,
            order_id=row.order_id,
            entry_type="refund_reversal",
            amount=-TOTAL,
            currency=row.currency,
            source="razorpay",
            source_ref="rfnd_failed",
            payment_ref="pay_books",
            created_at=utcnow(),
        )
    )
    await connection.execute(
        update(orders).where(orders.c.id == row.order_id).values(status="refunded")
    )


async def _another_senders_order_answered(connection: AsyncConnection, number: str) -> None:
    """Defect 5: the second sender's message answered with the first sender's order."""
    second = await connection.scalar(
        select(retailers.c.id).where(retailers.c.whatsapp_id == "whatsapp:+919812345678")
    )
    await connection.execute(
        update(webhook_idempotency)
        .where(webhook_idempotency.c.retailer_id == second)
        .values(order_id=int(number[4:]))
    )


async def _dead_letter_kept_again(connection: AsyncConnection, _: str) -> None:
    """Defect 9: a redelivery after the record expired stored the dead letter again."""
    row = (await connection.execute(select(dead_letters))).mappings().one()
    copy = {name: value for name, value in row.items() if name != "id"}
    await connection.execute(insert(dead_letters).values(copy | {"delivery_key": None}))


async def _reply_accepted_twice(connection: AsyncConnection, _: str) -> None:
    """Defect 4: a second sender sent a reply whose first sender was still alive."""
    outbox = OutboxRepository(connection)
    now = utcnow()
    await outbox.enqueue("meta", "919876543210", "Order placed", "reply:wamid.audit", now)
    (message,) = await outbox.claim_due("meta", now, 1, lease=timedelta(minutes=2))
    await outbox.mark_sent(message, "wamid.out.1", now)
    await outbox.mark_sent(message, "wamid.out.2", now)


@pytest.mark.parametrize(
    ("corruption", "named"),
    [
        pytest.param(_second_refund_dropped, "a refund was never posted", id="refund-dropped"),
        pytest.param(
            _created_refund_taken_as_money_out, "money that never left", id="created-refund"
        ),
        pytest.param(_another_senders_order_answered, "another retailer", id="other-sender"),
        pytest.param(_dead_letter_kept_again, "kept 2 times", id="dead-letter-twice"),
        pytest.param(_reply_accepted_twice, "accepted 2 times", id="reply-twice"),
    ],
)
async def test_the_audit_fails_on_each_defect_put_back_by_hand(
    app_factory: Callable[..., FastAPI],
    db: AsyncEngine,
    corruption: Corruption,
    named: str,
) -> None:
    app = app_factory(
        stripe_webhook_secret=STRIPE_SECRET,
        razorpay_webhook_secret=RAZORPAY_SECRET,
        meta_app_secret=META_APP_SECRET,
    )
    async with app_client(app) as client:
        number = await _books_with_every_kind_of_row(client)
    async with db.connect() as connection:
        assert await reports.audit(connection) == []
    async with db.begin() as connection:
        await corruption(connection, number)
    async with db.connect() as connection:
        problems = await reports.audit(connection)
    assert any(named in problem for problem in problems), problems
