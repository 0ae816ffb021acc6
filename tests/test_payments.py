"""Payments from Stripe and Razorpay: each money movement happens once, whatever arrives.

Events are the shared fixtures pointed at a real order (placed through the Twilio webhook),
signed exactly as each provider signs them, on SQLite and PostgreSQL. After every story the
audits of the books find nothing wrong.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    INBOUND_PATH,
    RAZORPAY_PATH,
    RAZORPAY_SECRET,
    STRIPE_PATH,
    STRIPE_SECRET,
    app_client,
    assert_problem,
    encode,
    inbound_form,
    new_razorpay_event_id,
    razorpay_event,
    razorpay_headers,
    reply_text,
    signed_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
    stripe_v1,
)
from whatsorder.db import reports
from whatsorder.db.tables import (
    ledger_entries,
    orders,
    payment_exceptions,
    payments,
    webhook_idempotency,
)
from whatsorder.ordering.model import OrderStatus, order_id_from_number
from whatsorder.ordering.payment_model import (
    ExceptionKind,
    PayableOrder,
    PaymentEvent,
    PaymentKind,
    mismatches,
)
from whatsorder.providers import razorpay as razorpay_provider
from whatsorder.providers import stripe as stripe_provider
from whatsorder.web import payments as payment_routes
from whatsorder_idempotency.record import utcnow

SUGAR_PRICE = 4_800  # paise, from the demo catalogue


def with_payment_routes(app: FastAPI) -> FastAPI:
    """The app with the payment routes, until create_app includes them itself."""
    if not any(getattr(route, "path", None) == STRIPE_PATH for route in app.routes):
        app.include_router(payment_routes.router)
    return app


@pytest.fixture
def payments_app(app_factory: Callable[..., FastAPI]) -> Callable[..., FastAPI]:
    """``payments_app(**settings)``: the app with both payment secrets (unless overridden)."""

    def build(**overrides: Any) -> FastAPI:
        settings = {
            "stripe_webhook_secret": STRIPE_SECRET,
            "razorpay_webhook_secret": RAZORPAY_SECRET,
            **overrides,
        }
        return with_payment_routes(app_factory(**settings))

    return build


@pytest.fixture
async def client(payments_app: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(payments_app()) as http:
        yield http


async def place_order(client: httpx.AsyncClient, text: str = "ORDER 1 x SUGAR-1KG") -> str:
    """A real order, placed by a customer over Twilio; its number."""
    pairs = inbound_form(text)
    response = await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    found = re.search(r"ORD-\d+", reply_text(response))
    assert found is not None, reply_text(response)
    return found.group()


async def post_stripe(
    client: httpx.AsyncClient, event: dict[str, Any], **signing: Any
) -> httpx.Response:
    body = stripe_body(event)
    return await client.post(STRIPE_PATH, content=body, headers=stripe_headers(body, **signing))


async def post_razorpay(
    client: httpx.AsyncClient, body: bytes, event_id: str | None = None
) -> httpx.Response:
    return await client.post(
        RAZORPAY_PATH,
        content=body,
        headers=razorpay_headers(body, event_id or new_razorpay_event_id()),
    )


@dataclass(frozen=True)
class Books:
    """What the payments of one order left behind."""

    status: str
    credits: list[int]
    reversals: list[int]
    payments: list[str]
    exceptions: list[str]


async def books(db: AsyncEngine, number: str) -> Books:
    order_id = order_id_from_number(number)
    async with db.connect() as connection:
        status = await connection.scalar(select(orders.c.status).where(orders.c.id == order_id))

        async def entries(entry_type: str) -> list[int]:
            rows = await connection.execute(
                select(ledger_entries.c.amount).where(
                    ledger_entries.c.order_id == order_id,
                    ledger_entries.c.entry_type == entry_type,
                )
            )
            return [row.amount for row in rows]

        paid = await connection.execute(
            select(payments.c.status).where(payments.c.order_id == order_id).order_by(payments.c.id)
        )
        noted = await connection.execute(
            select(payment_exceptions.c.kind)
            .where(payment_exceptions.c.order_id == order_id)
            .order_by(payment_exceptions.c.id)
        )
        return Books(
            status=str(status),
            credits=await entries("payment_credit"),
            reversals=await entries("refund_reversal"),
            payments=[row.status for row in paid],
            exceptions=[row.kind for row in noted],
        )


async def stored(db: AsyncEngine) -> tuple[int, ...]:
    """Everything a payment request can write: a refused request must change none of it."""
    async with db.connect() as connection:
        counts = []
        for table in (payments, payment_exceptions, ledger_entries, webhook_idempotency):
            counts.append(
                int(await connection.scalar(select(func.count()).select_from(table)) or 0)
            )
        counts.append(
            int(
                await connection.scalar(
                    select(func.count()).select_from(orders).where(orders.c.status != "placed")
                )
                or 0
            )
        )
        return tuple(counts)


async def assert_books_balance(db: AsyncEngine) -> None:
    async with db.connect() as connection:
        assert await reports.audit(connection) == []
        assert await reports.payment_audit(connection) == []


# --- Stripe ---------------------------------------------------------------------------------


async def test_a_stripe_payment_marks_the_order_paid_and_its_redelivery_replays(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    event = stripe_event(number, SUGAR_PRICE)

    first = await post_stripe(client, event)
    again = await post_stripe(client, event)  # Stripe's retry: a new t=, the same event

    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/json"
    answer = first.json()
    assert answer["received"] is True
    assert (answer["result"], answer["order"], answer["order_status"]) == (
        "credited",
        number,
        "paid",
    )
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert await books(db, number) == Books("paid", [SUGAR_PRICE], [], ["succeeded"], [])
    await assert_books_balance(db)


async def test_stripe_signatures_right_rotated_wrong_missing_stale_and_future(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    event = stripe_event(number, SUGAR_PRICE)
    body = stripe_body(event)
    now = int(time.time())
    before = await stored(db)

    missing = await client.post(
        STRIPE_PATH, content=body, headers={"Content-Type": "application/json"}
    )
    assert_problem(missing, 401, "signature-missing")
    wrong = await client.post(
        STRIPE_PATH, content=body, headers=stripe_headers(body, secret="whsec_not_ours")
    )
    assert_problem(wrong, 403, "signature-invalid")
    tampered = await client.post(
        STRIPE_PATH, content=body.replace(b"4800", b"4801"), headers=stripe_headers(body)
    )
    assert_problem(tampered, 403, "signature-invalid")
    garbled = await client.post(
        STRIPE_PATH, content=body, headers={"Stripe-Signature": "t=abc,v2=zz"}
    )
    assert_problem(garbled, 403, "signature-invalid")
    stale = await client.post(
        STRIPE_PATH, content=body, headers=stripe_headers(body, timestamp=now - 305)
    )
    assert_problem(stale, 400, "outside-replay-window")
    # 400 s ahead: still outside the window however slowly the requests before it ran
    future = await client.post(
        STRIPE_PATH, content=body, headers=stripe_headers(body, timestamp=now + 400)
    )
    assert_problem(future, 400, "outside-replay-window")
    non_ascii = await client.post(
        STRIPE_PATH, content=body, headers={"Stripe-Signature": b"t=1,v1=" + b"\xe9" * 64}
    )
    assert_problem(non_ascii, 403, "signature-invalid")
    latin1 = await client.post(STRIPE_PATH, content=b"\xe9", headers=stripe_headers(b"\xe9"))
    assert_problem(latin1, 400, "malformed-body")
    assert await stored(db) == before  # no refused request left anything behind

    # Secret rotation: Stripe signs with the old and the new secret; only the second is ours.
    rotated_headers = stripe_headers(
        body, extra_v1=[stripe_v1(body, now, "whsec_the_old_secret")], timestamp=now
    )
    assert rotated_headers["Stripe-Signature"].count("v1=") == 2
    rotated = await client.post(STRIPE_PATH, content=body, headers=rotated_headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["result"] == "credited"
    within = await client.post(
        STRIPE_PATH, content=body, headers=stripe_headers(body, timestamp=now - 295)
    )
    assert within.status_code == 200
    assert within.headers["idempotent-replayed"] == "true"
    assert (await books(db, number)).credits == [SUGAR_PRICE]
    await assert_books_balance(db)


async def test_checkout_session_and_its_payment_intent_post_one_credit(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    intent = stripe_event(number, SUGAR_PRICE, payment_id="pi_checkout_1")
    session = stripe_event(number, SUGAR_PRICE, event_type="checkout.session.completed")
    session["data"]["object"] = {
        "id": "cs_test_a1",
        "object": "checkout.session",
        "amount_total": SUGAR_PRICE,
        "currency": "inr",
        "payment_intent": "pi_checkout_1",
        "payment_status": "paid",
        "metadata": {"order_id": number},
    }

    first = await post_stripe(client, session)
    second = await post_stripe(client, intent)

    assert (first.json()["result"], second.json()["result"]) == ("credited", "already_credited")
    assert await books(db, number) == Books(
        "paid", [SUGAR_PRICE], [], ["succeeded", "succeeded"], []
    )
    await assert_books_balance(db)


async def test_a_stripe_retry_whose_pending_webhooks_changed_replays_but_other_content_is_422(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    event = stripe_event(number, SUGAR_PRICE)
    await post_stripe(client, event)

    retry = await post_stripe(client, {**event, "pending_webhooks": 0})
    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"

    other = stripe_event(number, SUGAR_PRICE + 1, event_id=event["id"])
    reused = await post_stripe(client, other)
    assert reused.status_code == 422
    assert (await books(db, number)).credits == [SUGAR_PRICE]


async def test_a_stripe_refund_before_its_payment_nets_out_and_is_noted(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    refund = stripe_event(number, SUGAR_PRICE, event_type="charge.refunded", payment_id="pi_r1")
    success = stripe_event(number, SUGAR_PRICE, payment_id="pi_r1")

    refunded = await post_stripe(client, refund)
    paid = await post_stripe(client, success)

    assert refunded.json()["exceptions"] == ["refund_before_payment"]
    assert paid.json()["order_status"] == "refunded"
    state = await books(db, number)
    assert state.status == "refunded"
    assert (state.credits, state.reversals) == ([SUGAR_PRICE], [-SUGAR_PRICE])
    assert state.exceptions == ["refund_before_payment"]
    await assert_books_balance(db)


async def test_ignored_stripe_events_are_acknowledged_and_store_nothing(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    before = await stored(db)
    event = stripe_event(number, SUGAR_PRICE, event_type="customer.created")
    unpaid = stripe_event(number, SUGAR_PRICE, event_type="checkout.session.completed")
    unpaid["data"]["object"] |= {"amount_total": SUGAR_PRICE, "payment_status": "unpaid"}

    for ignored in (event, unpaid):
        response = await post_stripe(client, ignored)
        assert response.status_code == 200
        assert response.json()["received"] is True
        assert response.json()["ignored"] == ignored["type"]
    assert await stored(db) == before


# --- Razorpay -------------------------------------------------------------------------------


async def test_razorpay_signatures_right_wrong_and_missing_and_the_event_id_header(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    body = razorpay_event(number, SUGAR_PRICE)
    event_id = new_razorpay_event_id()
    before = await stored(db)

    missing = await client.post(
        RAZORPAY_PATH,
        content=body,
        headers={"Content-Type": "application/json", "x-razorpay-event-id": event_id},
    )
    assert_problem(missing, 401, "signature-missing")
    wrong = await client.post(
        RAZORPAY_PATH, content=body, headers=razorpay_headers(body, event_id, secret="not-ours")
    )
    assert_problem(wrong, 403, "signature-invalid")
    non_ascii = await client.post(
        RAZORPAY_PATH,
        content=body,
        headers={
            **razorpay_headers(body, event_id),
            "X-Razorpay-Signature": "é".encode("latin-1") * 64,
        },
    )
    assert_problem(non_ascii, 403, "signature-invalid")
    no_event_id = await client.post(RAZORPAY_PATH, content=body, headers=razorpay_headers(body))
    assert_problem(no_event_id, 400, "event-id-missing")
    spaced = await client.post(RAZORPAY_PATH, content=body, headers=razorpay_headers(body, "a b"))
    assert_problem(spaced, 400, "invalid-key")
    assert await stored(db) == before

    right = await post_razorpay(client, body, event_id)
    again = await post_razorpay(client, body, event_id)
    assert right.status_code == 200, right.text
    assert right.json()["result"] == "credited"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == right.content
    assert await books(db, number) == Books("paid", [SUGAR_PRICE], [], ["succeeded"], [])
    await assert_books_balance(db)


async def test_payment_captured_then_order_paid_post_one_credit(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)

    captured = await post_razorpay(client, razorpay_event(number, SUGAR_PRICE))
    order_paid = await post_razorpay(
        client, razorpay_event(number, SUGAR_PRICE, event="order.paid")
    )

    assert captured.json()["result"] == "credited"
    assert order_paid.json()["result"] == "already_credited"
    assert await books(db, number) == Books(
        "paid", [SUGAR_PRICE], [], ["succeeded", "succeeded"], []
    )
    await assert_books_balance(db)


async def test_payment_failed_then_captured_ends_paid_and_a_late_failure_changes_nothing(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)

    failed = await post_razorpay(
        client, razorpay_event(number, SUGAR_PRICE, event="payment.failed")
    )
    assert failed.json()["result"] == "failure_recorded"
    assert await books(db, number) == Books("placed", [], [], ["failed"], [])

    captured = await post_razorpay(client, razorpay_event(number, SUGAR_PRICE))
    late = await post_razorpay(client, razorpay_event(number, SUGAR_PRICE, event="payment.failed"))

    assert captured.json()["result"] == "credited"
    assert late.json()["order_status"] == "paid"
    assert await books(db, number) == Books(
        "paid", [SUGAR_PRICE], [], ["failed", "succeeded", "failed"], []
    )
    await assert_books_balance(db)


async def test_a_razorpay_refund_before_its_capture_ends_refunded_with_credit_and_reversal(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)

    refund = await post_razorpay(
        client, razorpay_event(number, SUGAR_PRICE, event="refund.processed", refund_id="rfnd_1")
    )
    captured = await post_razorpay(client, razorpay_event(number, SUGAR_PRICE))
    again = await post_razorpay(  # the same refund announced again, under another event
        client, razorpay_event(number, SUGAR_PRICE, event="refund.processed", refund_id="rfnd_1")
    )
    created = await post_razorpay(  # its creation, late: it moves no money
        client, razorpay_event(number, SUGAR_PRICE, event="refund.created", refund_id="rfnd_1")
    )

    assert refund.json()["result"] == "reversed"
    assert captured.json()["result"] == "credited"
    assert again.json()["result"] == "already_reversed"
    assert created.json()["result"] == "refund_pending"
    assert await books(db, number) == Books(
        "refunded",
        [SUGAR_PRICE],
        [-SUGAR_PRICE],
        ["refunded", "succeeded", "refunded", "refund_pending"],
        ["refund_before_payment"],
    )
    await assert_books_balance(db)


async def test_a_refund_after_payment_moves_the_order_to_refunded(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    await post_razorpay(client, razorpay_event(number, SUGAR_PRICE))
    await post_razorpay(client, razorpay_event(number, SUGAR_PRICE, event="refund.processed"))
    # A capture replayed after the refund never moves the order back to paid.
    await post_razorpay(client, razorpay_event(number, SUGAR_PRICE, event="order.paid"))

    assert await books(db, number) == Books(
        "refunded", [SUGAR_PRICE], [-SUGAR_PRICE], ["succeeded", "refunded", "succeeded"], []
    )
    await assert_books_balance(db)


# --- Both: mismatches, unknown orders, concurrency, expiry ------------------------------------


async def test_an_amount_or_currency_mismatch_is_an_exception_and_pays_nothing(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)

    short = await post_razorpay(client, razorpay_event(number, SUGAR_PRICE - 100))
    dollars = await post_stripe(client, stripe_event(number, SUGAR_PRICE, currency="usd"))

    assert short.status_code == dollars.status_code == 200
    assert short.json()["result"] == dollars.json()["result"] == "mismatch"
    state = await books(db, number)
    assert state.status == "placed"
    assert state.credits == []
    assert state.exceptions == ["amount_mismatch", "currency_mismatch"]
    async with db.connect() as connection:
        row = (
            await connection.execute(
                select(payment_exceptions).where(payment_exceptions.c.kind == "amount_mismatch")
            )
        ).one()
    assert (row.expected_amount, row.received_amount, row.currency) == (
        SUGAR_PRICE,
        SUGAR_PRICE - 100,
        "INR",
    )
    # The right amount, in another case of the same currency, still pays it.
    upper = await post_stripe(client, stripe_event(number, SUGAR_PRICE, currency="INR"))
    assert upper.json()["result"] == "credited"
    await assert_books_balance(db)


async def test_a_payment_for_an_unknown_order_is_an_exception_answered_200(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await place_order(client)
    responses = [
        await post_stripe(client, stripe_event("ORD-999999", SUGAR_PRICE)),
        await post_stripe(client, stripe_event(None, SUGAR_PRICE)),
        await post_razorpay(client, razorpay_event("not-an-order", SUGAR_PRICE)),
        await post_razorpay(client, razorpay_event(None, SUGAR_PRICE)),  # notes: []
    ]

    assert [response.status_code for response in responses] == [200] * 4
    assert {response.json()["result"] for response in responses} == {"unknown_order"}
    async with db.connect() as connection:
        kinds = (await connection.execute(select(payment_exceptions.c.kind))).scalars().all()
        assert await connection.scalar(select(func.count()).select_from(payments)) == 0
        assert (
            await connection.scalar(
                select(func.count())
                .select_from(ledger_entries)
                .where(ledger_entries.c.entry_type != "order_debit")
            )
            == 0
        )
    assert kinds == ["unknown_order"] * 4
    await assert_books_balance(db)


async def test_a_payment_after_cancel_is_credited_and_noted(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    pairs = inbound_form(f"CANCEL {number}")
    await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )

    response = await post_stripe(client, stripe_event(number, SUGAR_PRICE))

    assert response.json()["exceptions"] == ["paid_after_cancel"]
    assert await books(db, number) == Books(
        "cancelled", [SUGAR_PRICE], [], ["succeeded"], ["paid_after_cancel"]
    )
    await assert_books_balance(db)


async def test_twenty_concurrent_duplicates_post_one_credit(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    stripe_order = await place_order(client)
    razorpay_order = await place_order(client)
    event = stripe_event(stripe_order, SUGAR_PRICE)
    # Razorpay: twenty events about one payment, each under its own event id.
    kinds = ["payment.captured", "order.paid"] * 10
    bodies = [
        (razorpay_event(razorpay_order, SUGAR_PRICE, event=kind), new_razorpay_event_id())
        for kind in kinds
    ]

    responses = await asyncio.gather(
        *(post_stripe(client, event) for _ in range(20)),
        *(post_razorpay(client, body, event_id) for body, event_id in bodies),
    )

    assert [response.status_code for response in responses] == [200] * 40, [
        response.text for response in responses if response.status_code != 200
    ]
    assert sum("idempotent-replayed" not in response.headers for response in responses[:20]) == 1
    assert await books(db, stripe_order) == Books("paid", [SUGAR_PRICE], [], ["succeeded"], [])
    razorpay_books = await books(db, razorpay_order)
    assert (razorpay_books.status, razorpay_books.credits) == ("paid", [SUGAR_PRICE])
    assert len(razorpay_books.payments) == 20
    assert sorted(response.json()["result"] for response in responses[20:]) == [
        "already_credited"
    ] * 19 + ["credited"]
    await assert_books_balance(db)


async def test_after_the_records_expired_a_redelivery_posts_no_second_credit(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    stripe_order = await place_order(client)
    razorpay_order = await place_order(client)
    event = stripe_event(stripe_order, SUGAR_PRICE)
    body = razorpay_event(razorpay_order, SUGAR_PRICE)
    event_id = new_razorpay_event_id()
    await post_stripe(client, event)
    await post_razorpay(client, body, event_id)
    async with db.begin() as connection:
        await connection.execute(
            update(webhook_idempotency).values(expires_at=utcnow() - timedelta(seconds=1))
        )

    stripe_again = await post_stripe(client, event)
    razorpay_again = await post_razorpay(client, body, event_id)

    for again in (stripe_again, razorpay_again):
        assert again.status_code == 200
        assert "idempotent-replayed" not in again.headers  # processed again...
        assert again.json()["result"] == "already_credited"  # ...and nothing moved
    for number in (stripe_order, razorpay_order):
        assert await books(db, number) == Books("paid", [SUGAR_PRICE], [], ["succeeded"], [])
    await assert_books_balance(db)


async def test_a_second_payment_for_a_paid_order_is_credited_and_noted(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place_order(client)
    await post_stripe(client, stripe_event(number, SUGAR_PRICE))

    second = await post_razorpay(client, razorpay_event(number, SUGAR_PRICE))

    assert second.json()["exceptions"] == ["paid_twice"]
    assert await books(db, number) == Books(
        "paid", [SUGAR_PRICE, SUGAR_PRICE], [], ["succeeded", "succeeded"], ["paid_twice"]
    )
    await assert_books_balance(db)


async def test_unconfigured_providers_answer_503_and_plain_http_is_refused(
    payments_app: Callable[..., FastAPI], db: AsyncEngine
) -> None:
    body = razorpay_event("ORD-000001", SUGAR_PRICE)
    event = stripe_body(stripe_event("ORD-000001", SUGAR_PRICE))
    async with app_client(
        payments_app(stripe_webhook_secret=None, razorpay_webhook_secret=None)
    ) as client:
        before = await stored(db)
        stripe_answer = await client.post(STRIPE_PATH, content=event, headers=stripe_headers(event))
        razorpay_answer = await client.post(
            RAZORPAY_PATH, content=body, headers=razorpay_headers(body, new_razorpay_event_id())
        )
        assert_problem(stripe_answer, 503, "provider-not-configured")
        assert_problem(razorpay_answer, 503, "provider-not-configured")
    async with app_client(payments_app(), base_url="http://testserver") as client:
        plain = await client.post(STRIPE_PATH, content=event, headers=stripe_headers(event))
        assert_problem(plain, 403, "https-required")
    async with app_client(payments_app(max_body_bytes=2048)) as client:
        large = b" " * 4096 + body
        too_large = await client.post(
            RAZORPAY_PATH, content=large, headers=razorpay_headers(large, "evt_big")
        )
        assert_problem(too_large, 413, "body-too-large")
    assert await stored(db) == before


# --- The domain and the parsers, without a database -----------------------------------------


def test_a_currency_is_compared_without_regard_to_case() -> None:
    order = PayableOrder(id=7, retailer_id=1, status=OrderStatus.PLACED, total=500, currency="INR")
    event = PaymentEvent("stripe", "evt_1", PaymentKind.SUCCEEDED, "pi_1", "ORD-000007", 500, "inr")
    assert mismatches(order, event) == []
    wrong = PaymentEvent("stripe", "evt_2", PaymentKind.SUCCEEDED, "pi_1", "ORD-000007", 499, "usd")
    assert [found.kind for found in mismatches(order, wrong)] == [
        ExceptionKind.CURRENCY_MISMATCH,
        ExceptionKind.AMOUNT_MISMATCH,
    ]


def test_the_stripe_library_verifies_our_test_signatures() -> None:
    body = stripe_body(stripe_event("ORD-000001", SUGAR_PRICE))
    now = int(time.time())
    header = stripe_headers(body, timestamp=now)["Stripe-Signature"]
    assert header == stripe_provider.sign(STRIPE_SECRET, body.decode(), now)
    stripe_provider.verify(body.decode(), header, STRIPE_SECRET, now)


def test_razorpay_events_are_read_as_the_provider_shapes_them() -> None:
    refund = razorpay_event(
        "ORD-000003", 250, event="refund.processed", payment_id="pay_X", refund_id="rfnd_X1"
    )
    assert razorpay_provider.signature_is_valid(
        RAZORPAY_SECRET, refund.decode(), razorpay_provider.sign(RAZORPAY_SECRET, refund)
    )
    event_type, payment = razorpay_provider.parse_event(refund.decode(), "evt_r")
    assert event_type == "refund.processed"
    assert payment == PaymentEvent(
        "razorpay", "evt_r", PaymentKind.REFUNDED, "pay_X", "ORD-000003", 250, "INR", "rfnd_X1"
    )
    assert (
        razorpay_provider.parse_event(b'{"event":"payment.authorized","payload":{}}'.decode(), "e")[
            1
        ]
        is None
    )
