"""``PAY ORD-…`` over a real database and the providers' SDKs against fake APIs on 127.0.0.1:
one link per order and amount, however often and however concurrently it is asked (issue #17)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import serving
from fake_payment_apis import RAZORPAY_KEY, STRIPE_KEY, FakePaymentApis
from whatsorder.db.tables import orders, payment_links
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering.link_ports import LinkRequest, PaymentLinks
from whatsorder.ordering.model import InboundMessage
from whatsorder.ordering.payment_model import LinkStatus, link_reference
from whatsorder.ordering.services import receive_message
from whatsorder.ordering.services.payment_links import LinkOutcome, request_payment_link
from whatsorder.providers.links.razorpay_links import RazorpayLinks
from whatsorder.providers.links.stripe_links import StripeLinks

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CUSTOMER = "whatsapp:+919800000001"


@pytest.fixture
def fake() -> Iterator[tuple[FakePaymentApis, str]]:
    apis = FakePaymentApis()
    with serving(apis.app) as base:
        yield apis, base


def _links(provider: str, base: str, *, stripe_key: str = STRIPE_KEY) -> PaymentLinks:
    if provider == "stripe":
        return StripeLinks(stripe_key, success_url="https://shop.test/paid", api_base=base)
    return RazorpayLinks(*RAZORPAY_KEY, api_base=base, first_delay=0.05)


async def _order(db: AsyncEngine, sender: str = CUSTOMER, sid: str = "SM-order-1") -> int:
    message = InboundMessage("twilio", sid, sender, "Asha Stores", "ORDER 2 x ATTA-5KG")
    outcome = await receive_message(SqlUnitOfWork(db), message, NOW)
    assert outcome.created, outcome.reply
    assert outcome.order_id is not None
    return outcome.order_id


async def _retailer(db: AsyncEngine, order_id: int) -> int:
    async with db.connect() as connection:
        found = await connection.scalar(select(orders.c.retailer_id).where(orders.c.id == order_id))
    return int(found)


async def _pay(
    db: AsyncEngine, links: PaymentLinks | None, number: str, retailer_id: int | None
) -> LinkOutcome:
    return await request_payment_link(
        SqlUnitOfWork(db), links, number, NOW, retailer_id=retailer_id
    )


async def _rows(db: AsyncEngine) -> list[tuple[object, ...]]:
    async with db.connect() as connection:
        result = await connection.execute(
            select(
                payment_links.c.provider,
                payment_links.c.reference,
                payment_links.c.status,
                payment_links.c.url,
            ).order_by(payment_links.c.id)
        )
        return [tuple(row) for row in result]


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
async def test_pay_answers_a_link_and_a_second_pay_the_same_one_without_asking_again(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    order_id = await _order(db)
    retailer_id = await _retailer(db, order_id)
    number = f"ORD-{order_id:06d}"

    first = await _pay(db, _links(provider, base), number, retailer_id)
    assert first.link is not None
    assert first.link.url is not None
    assert first.link.url in first.reply
    assert "₹" in first.reply
    assert number in first.reply
    calls = len(apis.requests)
    second = await _pay(db, _links(provider, base), number.lower(), retailer_id)
    assert second.reply == first.reply
    assert len(apis.requests) == calls  # answered from our row: the provider was not asked
    assert len(apis.links(provider)) == 1
    reference = link_reference(order_id, first.link.amount, "INR")
    assert await _rows(db) == [(provider, reference, "live", first.link.url)]


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
async def test_two_pays_at_the_same_moment_make_one_link(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    apis.delay = 0.3
    order_id = await _order(db)
    retailer_id = await _retailer(db, order_id)
    number = f"ORD-{order_id:06d}"
    outcomes = await asyncio.gather(
        _pay(db, _links(provider, base), number, retailer_id),
        _pay(db, _links(provider, base), number, retailer_id),
    )
    assert outcomes[0].reply == outcomes[1].reply
    assert len(apis.links(provider)) == 1
    assert len(await _rows(db)) == 1


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
async def test_a_crash_after_the_provider_made_the_link_gets_the_same_link_on_retry(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str], provider: str
) -> None:
    apis, base = fake
    order_id = await _order(db)
    retailer_id = await _retailer(db, order_id)
    number = f"ORD-{order_id:06d}"
    async with db.connect() as connection:
        total = await connection.scalar(select(orders.c.total).where(orders.c.id == order_id))
    # The process asked the provider, which made the link; then it died before storing it.
    made = await _links(provider, base).create(
        LinkRequest(number, total, "INR", f"Order {number}", link_reference(order_id, total, "INR"))
    )
    assert await _rows(db) == []

    retried = await _pay(db, _links(provider, base), number, retailer_id)
    assert retried.link is not None
    assert retried.link.provider_link_id == made.link_id
    assert made.url in retried.reply
    assert len(apis.links(provider)) == 1


async def test_paid_cancelled_unknown_and_other_retailers_orders_create_nothing(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    links = _links("stripe", base)
    order_id = await _order(db)
    retailer_id = await _retailer(db, order_id)
    other = await _order(db, sender="whatsapp:+919800000002", sid="SM-order-2")
    number = f"ORD-{order_id:06d}"

    unknown = await _pay(db, links, "ORD-999999", retailer_id)
    assert "could not find order ORD-999999" in unknown.reply
    not_theirs = await _pay(db, links, f"ORD-{other:06d}", retailer_id)
    assert "could not find" in not_theirs.reply
    for status, expected in (("paid", "paid already"), ("cancelled", "is cancelled")):
        async with db.begin() as connection:
            await connection.execute(
                update(orders).where(orders.c.id == order_id).values(status=status)
            )
        outcome = await _pay(db, links, number, retailer_id)
        assert expected in outcome.reply
        assert outcome.link is None
    assert apis.requests == []
    assert await _rows(db) == []


async def test_no_provider_configured_says_so_and_creates_nothing(db: AsyncEngine) -> None:
    order_id = await _order(db)
    outcome = await _pay(db, None, f"ORD-{order_id:06d}", await _retailer(db, order_id))
    assert "not set up" in outcome.reply
    assert await _rows(db) == []


async def test_a_refusal_is_kept_for_the_operator_and_a_later_success_replaces_it(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    order_id = await _order(db)
    number = f"ORD-{order_id:06d}"

    refused = await _pay(db, _links("stripe", base, stripe_key="sk_test_wrong"), number, None)
    assert "The shop has been told" in refused.reply
    assert refused.failure is not None
    assert "Invalid API Key provided" in refused.failure
    async with db.connect() as connection:
        row = (await connection.execute(select(payment_links))).one()
    assert row.status == LinkStatus.FAILED.value
    assert "Invalid API Key provided" in row.last_error

    fixed = await _pay(db, _links("stripe", base), number, None)  # an operator, once fixed
    assert fixed.link is not None
    assert fixed.link.status is LinkStatus.LIVE
    async with db.connect() as connection:
        count = await connection.scalar(select(func.count()).select_from(payment_links))
        row = (await connection.execute(select(payment_links))).one()
    assert count == 1
    assert row.status == "live"
    assert row.last_error is None
    assert len(apis.links("stripe")) == 1


async def test_a_provider_down_answers_try_again_and_stores_nothing(
    db: AsyncEngine, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    apis.failures = [503] * 10
    order_id = await _order(db)
    outcome = await _pay(db, _links("razorpay", base), f"ORD-{order_id:06d}", None)
    assert "again in a minute" in outcome.reply
    assert outcome.failure is not None
    assert await _rows(db) == []
    assert apis.created == []
