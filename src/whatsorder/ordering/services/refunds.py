"""Refunds: money going back, posted once per refund, adding up to what the provider refunded.

A payment may be refunded in several parts, and providers say so in two ways:

- by the refund (Razorpay's ``refund.processed``): the event names its refund and that refund's
  amount. The reversal is keyed by the refund id, so each refund posts once however often it
  is announced, and two refunds of one payment post two reversals;
- by the total (Stripe's ``charge.refunded``): the event carries the payment's refunded total
  so far (``amount_refunded``, cumulative) and, in older API versions, the list of refunds.
  What the ledger lacks of that total is posted: each listed refund by its own id, and any
  rest under a reference naming the total it brings the payment to. Events may arrive in any
  order; a total already reached posts nothing.

The order's row is locked by the caller (`apply_payment`), so two refund events of one
payment never both compute what is missing from the same stale sum. An order is refunded when
its reversals reach all it was paid (`fully_refunded`); a partial refund leaves it as it was.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from whatsorder.ordering.model import EntryType, LedgerEntry, OrderStatus
from whatsorder.ordering.payment_model import (
    ExceptionKind,
    PayableOrder,
    PaymentEvent,
    PaymentException,
    PaymentOutcome,
    PaymentResult,
    noted,
    same_currency,
)
from whatsorder.ordering.ports import UnitOfWork

MAX_REF_CHARS = 255  # ledger_entries.source_ref


def reversal(event: PaymentEvent, refund_ref: str, amount: int) -> LedgerEntry:
    """The money back out for one refund: keyed by the refund, tied to its payment."""
    return LedgerEntry(
        EntryType.REFUND_REVERSAL,
        -amount,
        event.currency.upper(),
        event.provider,
        refund_ref,
        event.payment_id,
    )


def total_ref(payment_id: str, total: int) -> str:
    """The reference of a refund known only by the total it brought the payment to."""
    ref = f"{payment_id}:refunded-to:{total}"
    if len(ref) <= MAX_REF_CHARS:
        return ref
    return "refunded-to:" + hashlib.sha256(ref.encode()).hexdigest()


async def refunded(
    uow: UnitOfWork, event: PaymentEvent, order: PayableOrder, now: datetime
) -> PaymentOutcome:
    """Post what this refund event says left the payment and is not on the ledger yet."""
    if not same_currency(order.currency, event.currency):
        exception = noted(
            ExceptionKind.REFUND_MISMATCH,
            f"{order.number} is in {order.currency}; the refund is in {event.currency.upper()}.",
            order,
            event,
        )
        await uow.payments.record_exception(event, order.id, exception, now)
        return PaymentOutcome(
            PaymentResult.MISMATCH, order.id, order.status, (ExceptionKind.REFUND_MISMATCH,)
        )
    if event.refund_id is not None:
        posted = await uow.payments.post_entry(
            order, reversal(event, event.refund_id, event.amount), now
        )
    else:
        posted = await _post_up_to_total(uow, event, order, now)
    if not posted:
        status = await current_status(uow, order)
        return PaymentOutcome(PaymentResult.ALREADY_REVERSED, order.id, status)

    noted_now: list[PaymentException] = []
    credited = await uow.payments.credited(event.provider, event.payment_id)
    refunded_total = await uow.payments.refunded(event.provider, event.payment_id)
    if credited is None:
        # Providers promise no order: the success will still come and post its credit.
        noted_now.append(
            noted(
                ExceptionKind.REFUND_BEFORE_PAYMENT,
                f"The refund of {event.payment_id} arrived before its payment.",
                order,
                event,
            )
        )
    elif refunded_total > credited:
        noted_now.append(
            noted(
                ExceptionKind.REFUND_EXCEEDS_PAYMENT,
                f"{event.payment_id} paid {credited} and has {refunded_total} refunded.",
                order,
                event,
            )
        )
    if fully_refunded(order, *await uow.payments.order_money(order.id)):
        for expected in (OrderStatus.PLACED, OrderStatus.PAID):
            if await uow.ordering.set_order_status(order.id, expected, OrderStatus.REFUNDED, now):
                break
    for exception in noted_now:
        await uow.payments.record_exception(event, order.id, exception, now)
    return PaymentOutcome(
        PaymentResult.REVERSED,
        order.id,
        await current_status(uow, order),
        tuple(exception.kind for exception in noted_now),
    )


async def _post_up_to_total(
    uow: UnitOfWork, event: PaymentEvent, order: PayableOrder, now: datetime
) -> bool:
    """Bring the payment's reversals up to the refunded total the event reports.

    Never beyond it: a listed refund that would overshoot (its money was already posted under
    a total's reference by an earlier event without the list) is skipped. True if any posted.
    """
    missing = event.amount - await uow.payments.refunded(event.provider, event.payment_id)
    posted = False
    for refund in event.refunds:
        if 0 < refund.amount <= missing and await uow.payments.post_entry(
            order, reversal(event, refund.refund_id, refund.amount), now
        ):
            missing -= refund.amount
            posted = True
    if missing > 0:
        ref = total_ref(event.payment_id, event.amount)
        posted = await uow.payments.post_entry(order, reversal(event, ref, missing), now) or posted
    return posted


def fully_refunded(order: PayableOrder, credited: int, refunded: int) -> bool:
    """All the order's money is back: its total, or all it was paid if paid more than that.

    A refund that comes before its payment counts against the total; one of two payments of
    the same order (paid twice) leaves the order paid by the other.
    """
    return refunded > 0 and refunded >= max(order.total, credited)


async def current_status(uow: UnitOfWork, order: PayableOrder) -> OrderStatus:
    """The order's status as it is now in this transaction."""
    current = await uow.payments.order(order.id)
    assert current is not None  # orders are never deleted
    return current.status
