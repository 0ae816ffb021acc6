"""The reconciliation sweep against fake Stripe and Razorpay APIs on 127.0.0.1, and webhooks
signed and sent through the front door: each payment credits once and each refund reverses
once, whichever of the two saw it first, or both at the same instant (issue #17)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import serving
from fake_payment_apis import RAZORPAY_KEY, STRIPE_KEY, FakePaymentApis
from support import (
    RAZORPAY_PATH,
    RAZORPAY_SECRET,
    STRIPE_PATH,
    STRIPE_SECRET,
    app_client,
    new_razorpay_event_id,
    razorpay_event,
    razorpay_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder.db.audit import audit
from whatsorder.db.tables import ledger_entries, orders, payment_exceptions
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering.model import InboundMessage
from whatsorder.ordering.reconcile_ports import PaymentSource
from whatsorder.ordering.services import receive_message
from whatsorder.ordering.services.reconciliation import SweepReport, sweep
from whatsorder.providers.sweeps.razorpay_sweep import RazorpaySweep
from whatsorder.providers.sweeps.stripe_sweep import StripeSweep

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
SINCE = datetime.fromtimestamp(1_700_000_000, UTC)
UNTIL = datetime.fromtimestamp(1_900_000_000, UTC)
PROVIDERS = ["stripe", "razorpay"]


@pytest.fixture
def fake() -> Iterator[tuple[FakePaymentApis, str]]:
    apis = FakePaymentApis()
    with serving(apis.app) as base:
        yield apis, base


@pytest.fixture
async def http(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(stripe_webhook_secret=STRIPE_SECRET, razorpay_webhook_secret=RAZORPAY_SECRET)
    async with app_client(app) as client:
        yield client


def _source(provider: str, base: str) -> PaymentSource:
    if provider == "stripe":
        return StripeSweep(STRIPE_KEY, api_base=base)
    return RazorpaySweep(*RAZORPAY_KEY, api_base=base)


async def _sweep(
    db: AsyncEngine, provider: str, base: str, *, dry_run: bool = False
) -> SweepReport:
    return await sweep(
        lambda: SqlUnitOfWork(db), _source(provider, base), SINCE, UNTIL, NOW, dry_run=dry_run
    )


async def _order(db: AsyncEngine) -> tuple[str, int]:
    """An order placed by a customer: its number and total."""
    message = InboundMessage(
        "twilio", "SM-sweep-1", "whatsapp:+919800000009", "Ravi", "2 x ATTA-5KG"
    )
    outcome = await receive_message(SqlUnitOfWork(db), message, NOW)
    assert outcome.order_id is not None
    async with db.connect() as connection:
        total = await connection.scalar(
            select(orders.c.total).where(orders.c.id == outcome.order_id)
        )
    return f"ORD-{outcome.order_id:06d}", int(total)


async def _webhook(http: httpx.AsyncClient, provider: str, **event: Any) -> None:
    if provider == "stripe":
        body = stripe_body(stripe_event(**event))
        answer = await http.post(STRIPE_PATH, content=body, headers=stripe_headers(body))
    else:
        body = razorpay_event(**event)
        headers = razorpay_headers(body, new_razorpay_event_id())
        answer = await http.post(RAZORPAY_PATH, content=body, headers=headers)
    assert answer.status_code == 200, answer.text


async def _ledger(db: AsyncEngine, provider: str, payment_id: str) -> dict[str, int]:
    """The payment's entries on the ledger: count and sum by type."""
    async with db.connect() as connection:
        rows = await connection.execute(
            select(ledger_entries.c.entry_type, ledger_entries.c.amount).where(
                ledger_entries.c.source == provider, ledger_entries.c.payment_ref == payment_id
            )
        )
        found: dict[str, int] = {}
        for entry_type, amount in rows:
            found[f"{entry_type} count"] = found.get(f"{entry_type} count", 0) + 1
            found[f"{entry_type} sum"] = found.get(f"{entry_type} sum", 0) + amount
        return found


async def _audit(db: AsyncEngine) -> list[str]:
    async with db.connect() as connection:
        return await audit(connection)


async def _status(db: AsyncEngine, number: str) -> str:
    async with db.connect() as connection:
        found = await connection.scalar(
            select(orders.c.status).where(orders.c.id == int(number[4:]))
        )
    return str(found)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_payment_whose_webhook_never_came_is_credited_once_by_the_sweep(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    number, total = await _order(db)
    payment_id = apis.pay(provider, number, total)

    dry = await _sweep(db, provider, base, dry_run=True)
    assert dry.tally == {"would_credit": 1}
    assert await _ledger(db, provider, payment_id) == {}  # a dry run applies nothing

    first = await _sweep(db, provider, base)
    assert first.tally == {"credited": 1}
    assert number in first.lines[0]
    assert await _status(db, number) == "paid"
    again = await _sweep(db, provider, base)
    assert again.tally == {"already_credited": 1}
    assert await _ledger(db, provider, payment_id) == {
        "payment_credit count": 1,
        "payment_credit sum": total,
    }
    assert await _audit(db) == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_webhook_and_a_sweep_at_the_same_moment_credit_once(
    db: AsyncEngine, http: httpx.AsyncClient, fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    number, total = await _order(db)
    payment_id = apis.pay(provider, number, total)
    await asyncio.gather(
        _webhook(http, provider, order=number, amount=total, payment_id=payment_id),
        _sweep(db, provider, base),
    )
    assert await _ledger(db, provider, payment_id) == {
        "payment_credit count": 1,
        "payment_credit sum": total,
    }
    assert await _status(db, number) == "paid"
    assert await _audit(db) == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_payments_only_the_provider_knows_become_exceptions_for_the_operator(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    number, total = await _order(db)
    apis.pay(provider, None, 12_345)  # names no order
    apis.pay(provider, number, total + 100)  # our order, another amount
    report = await _sweep(db, provider, base)
    assert report.tally == {"unknown_order": 1, "mismatch": 1}
    async with db.connect() as connection:
        kinds = sorted((await connection.scalars(select(payment_exceptions.c.kind))).all())
    assert kinds == ["amount_mismatch", "unknown_order"]
    assert await _status(db, number) == "placed"
    again = await _sweep(db, provider, base)  # found again: no second exception
    assert again.found == 2
    async with db.connect() as connection:
        assert len((await connection.scalars(select(payment_exceptions.c.id))).all()) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_refund_seen_by_the_sweep_and_its_webhook_reverses_once(
    db: AsyncEngine, http: httpx.AsyncClient, fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    number, total = await _order(db)
    payment_id = apis.pay(provider, number, total)
    await _webhook(http, provider, order=number, amount=total, payment_id=payment_id)
    part = total // 4
    refund_id = apis.refund(provider, payment_id, part)
    if provider == "stripe":  # charge.refunded: the payment's refunded total so far
        refund_event = {"event_type": "charge.refunded", "order": number, "amount": part}
    else:
        refund_event = {"event": "refund.processed", "order": number, "amount": part}
        refund_event["refund_id"] = refund_id
    await asyncio.gather(
        _webhook(http, provider, payment_id=payment_id, **refund_event),
        _sweep(db, provider, base),
    )
    assert (await _ledger(db, provider, payment_id))["refund_reversal sum"] == -part

    apis.refund(provider, payment_id, part)  # a second partial refund, no webhook for it
    await _sweep(db, provider, base)
    await _sweep(db, provider, base)
    ledger = await _ledger(db, provider, payment_id)
    assert ledger["refund_reversal sum"] == -2 * part
    assert ledger["payment_credit count"] == 1
    assert await _status(db, number) == "paid"  # half refunded: still paid
    assert await _audit(db) == []
