"""The rules of payments and refunds, on the service layer over an in-memory unit of work.

Money moves once per payment and once per refund, whatever events announce it and in whatever
order; what does not match its order is noted for an operator, never accepted silently.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from fake_uow import FakeUnitOfWork
from whatsorder.ordering import services
from whatsorder.ordering.model import EntryType, InboundMessage, OrderStatus
from whatsorder.ordering.payment_model import (
    ExceptionKind,
    PaymentEvent,
    PaymentKind,
    PaymentOutcome,
    PaymentResult,
    Refund,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TOTAL = 2 * 15_500  # the order below: 2 x OIL-1L


async def placed_order(uow: FakeUnitOfWork, message_id: str = "SM1") -> int:
    inbound = InboundMessage("twilio", message_id, "whatsapp:+910000000001", "A", "2 x OIL-1L")
    outcome = await services.receive_message(uow, inbound, NOW)
    assert outcome.order_id is not None
    return outcome.order_id


def event(
    kind: PaymentKind = PaymentKind.SUCCEEDED,
    event_id: str = "evt_1",
    payment_id: str = "pay_1",
    amount: int = TOTAL,
    order: str | None = "ORD-000001",
    currency: str = "inr",
    **refund: object,
) -> PaymentEvent:
    return replace(
        PaymentEvent("stripe", event_id, kind, payment_id, order, amount, currency), **refund
    )


async def apply(uow: FakeUnitOfWork, *events: PaymentEvent) -> PaymentOutcome:
    outcome = PaymentOutcome(PaymentResult.UNKNOWN_ORDER)
    for each in events:
        outcome = await services.apply_payment(uow, each, NOW)
    return outcome


def noted(uow: FakeUnitOfWork) -> list[ExceptionKind]:
    return [exception.kind for exception in uow.books.payment_exceptions.values()]


def money(uow: FakeUnitOfWork, entry_type: EntryType) -> list[int]:
    return [entry.amount for entry in uow.books.entries(entry_type)]


async def test_a_payment_is_credited_once_whatever_events_announce_it() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)

    first = await apply(uow, event(event_id="evt_1"))
    others = [await apply(uow, event(event_id=e)) for e in ("evt_1", "evt_2")]

    assert (first.result, first.order_status) == (PaymentResult.CREDITED, OrderStatus.PAID)
    assert [o.result for o in others] == [PaymentResult.ALREADY_CREDITED] * 2
    assert money(uow, EntryType.PAYMENT_CREDIT) == [TOTAL]
    assert uow.books.orders[1].status is OrderStatus.PAID
    assert len(uow.books.payment_events) == 2  # every event is noted, each once


@pytest.mark.parametrize(
    ("changes", "kinds"),
    [
        ({"amount": TOTAL - 1}, [ExceptionKind.AMOUNT_MISMATCH]),
        ({"currency": "usd"}, [ExceptionKind.CURRENCY_MISMATCH]),
        (
            {"amount": 1, "currency": "eur"},
            [ExceptionKind.CURRENCY_MISMATCH, ExceptionKind.AMOUNT_MISMATCH],
        ),
    ],
)
async def test_a_payment_that_does_not_match_its_order_is_noted_and_credits_nothing(
    changes: dict[str, object], kinds: list[ExceptionKind]
) -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)

    outcome = await apply(uow, event(**changes))  # type: ignore[arg-type]

    assert (outcome.result, list(outcome.exceptions)) == (PaymentResult.MISMATCH, kinds)
    assert noted(uow) == kinds
    assert money(uow, EntryType.PAYMENT_CREDIT) == []
    assert uow.books.orders[1].status is OrderStatus.PLACED


@pytest.mark.parametrize("order", [None, "ORD-000099", "not an order"])
async def test_a_payment_for_no_order_of_ours_is_noted(order: str | None) -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)

    outcome = await apply(uow, event(order=order))

    assert outcome.result is PaymentResult.UNKNOWN_ORDER
    assert noted(uow) == [ExceptionKind.UNKNOWN_ORDER]
    assert uow.books.ledger[1:] == []  # the order's debit only


async def test_a_payment_after_cancel_is_credited_and_noted_for_a_refund() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    inbound = InboundMessage("twilio", "SM2", "whatsapp:+910000000001", "A", "CANCEL ORD-000001")
    await services.receive_message(uow, inbound, NOW)

    outcome = await apply(uow, event())

    assert outcome.exceptions == (ExceptionKind.PAID_AFTER_CANCEL,)
    assert (outcome.result, outcome.order_status) == (
        PaymentResult.CREDITED,
        OrderStatus.CANCELLED,
    )
    assert money(uow, EntryType.PAYMENT_CREDIT) == [TOTAL]


async def test_a_second_payment_of_a_paid_order_is_credited_and_noted() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)

    outcome = await apply(uow, event(), event(event_id="evt_2", payment_id="pay_2"))

    assert outcome.exceptions == (ExceptionKind.PAID_TWICE,)
    assert money(uow, EntryType.PAYMENT_CREDIT) == [TOTAL, TOTAL]
    assert uow.books.orders[1].status is OrderStatus.PAID


async def test_a_second_payment_after_a_full_refund_is_credited_and_noted() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    refund = event(PaymentKind.REFUNDED, event_id="evt_r", refund_id="re_1")

    outcome = await apply(uow, event(), refund, event(event_id="evt_2", payment_id="pay_2"))

    assert outcome.exceptions == (ExceptionKind.PAID_AFTER_REFUND,)
    assert money(uow, EntryType.PAYMENT_CREDIT) == [TOTAL, TOTAL]
    assert uow.books.orders[1].status is OrderStatus.REFUNDED


async def test_a_payment_whose_own_refund_came_first_completes_the_pair_unnoted_again() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    refund = event(PaymentKind.REFUNDED, event_id="evt_r", refund_id="re_1")

    outcome = await apply(uow, refund, event())

    assert outcome.exceptions == ()
    assert noted(uow) == [ExceptionKind.REFUND_BEFORE_PAYMENT]


@pytest.mark.parametrize("kind", [PaymentKind.FAILED, PaymentKind.REFUND_PENDING])
async def test_failures_and_pending_refunds_move_no_money(kind: PaymentKind) -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)

    outcome = await apply(uow, event(kind, refund_id="re_1"))

    assert outcome.order_status is OrderStatus.PLACED
    assert uow.books.ledger[1:] == []


async def test_a_failed_payment_does_not_stop_a_later_capture() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)

    outcome = await apply(uow, event(PaymentKind.FAILED), event(event_id="evt_2"))

    assert outcome.result is PaymentResult.CREDITED
    assert uow.books.orders[1].status is OrderStatus.PAID


# Refunds


def refund(event_id: str, amount: int, **by: object) -> PaymentEvent:
    return event(PaymentKind.REFUNDED, event_id=event_id, amount=amount, **by)


async def test_partial_refunds_by_id_post_once_each_and_the_last_one_refunds_the_order() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    await apply(uow, event())

    part = await apply(uow, refund("evt_r1", 10_000, refund_id="re_1"))
    again = await apply(uow, refund("evt_r1b", 10_000, refund_id="re_1"))

    assert (part.result, part.order_status) == (PaymentResult.REVERSED, OrderStatus.PAID)
    assert again.result is PaymentResult.ALREADY_REVERSED

    rest = await apply(uow, refund("evt_r2", TOTAL - 10_000, refund_id="re_2"))

    assert (rest.result, rest.order_status) == (PaymentResult.REVERSED, OrderStatus.REFUNDED)
    assert money(uow, EntryType.REFUND_REVERSAL) == [-10_000, -(TOTAL - 10_000)]


async def test_refunds_by_cumulative_total_post_only_what_the_ledger_lacks() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    await apply(uow, event())

    await apply(uow, refund("evt_r2", 10_000))  # the total so far: 10 000
    await apply(uow, refund("evt_r2", 10_000))  # the same event again
    late = await apply(uow, refund("evt_r1", 4_000))  # an older total, arriving late
    full_event = refund(
        "evt_r3", TOTAL, refunds=(Refund("re_1", 10_000), Refund("re_2", TOTAL - 10_000))
    )
    full = await apply(uow, full_event)

    assert late.result is PaymentResult.ALREADY_REVERSED
    assert full.order_status is OrderStatus.REFUNDED
    # Up to the total, never beyond it: re_2 would overshoot, so the rest goes by the total.
    assert money(uow, EntryType.REFUND_REVERSAL) == [-10_000, -10_000, -(TOTAL - 20_000)]
    again = await apply(uow, replace(full_event, event_id="evt_r4"))
    assert again.result is PaymentResult.ALREADY_REVERSED


async def test_a_refund_before_its_payment_is_noted_and_the_payment_still_credits() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)

    early = await apply(uow, refund("evt_r1", TOTAL, refund_id="re_1"))
    paid = await apply(uow, event())

    assert early.exceptions == (ExceptionKind.REFUND_BEFORE_PAYMENT,)
    assert early.order_status is OrderStatus.REFUNDED
    assert (paid.result, paid.exceptions) == (PaymentResult.CREDITED, ())
    assert sum(entry.amount for entry in uow.books.entries(EntryType.PAYMENT_CREDIT)) == TOTAL


async def test_a_refund_beyond_the_payment_is_noted() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    await apply(uow, event())

    outcome = await apply(uow, refund("evt_r1", TOTAL + 1, refund_id="re_1"))

    assert outcome.exceptions == (ExceptionKind.REFUND_EXCEEDS_PAYMENT,)


async def test_a_refund_in_another_currency_is_noted_and_moves_nothing() -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    await apply(uow, event())

    outcome = await apply(uow, refund("evt_r1", 100, refund_id="re_1", currency="usd"))

    assert outcome.exceptions == (ExceptionKind.REFUND_MISMATCH,)
    assert money(uow, EntryType.REFUND_REVERSAL) == []


@pytest.mark.parametrize("kind", [PaymentKind.REFUND_PENDING, PaymentKind.REFUND_FAILED])
async def test_a_refund_asked_for_or_failed_moves_nothing(kind: PaymentKind) -> None:
    uow = FakeUnitOfWork()
    await placed_order(uow)
    await apply(uow, event())

    outcome = await apply(uow, event(kind, event_id="evt_r", refund_id="re_1"))

    assert outcome.order_status is OrderStatus.PAID
    assert money(uow, EntryType.REFUND_REVERSAL) == []
