"""Payments: what a provider's payment event does to an order and the ledger.

Providers deliver at least once, in any order, and may announce one payment under several event
ids (Razorpay's ``payment.captured`` and ``order.paid``; Stripe's ``checkout.session.completed``
and ``payment_intent.succeeded``). So every money movement is keyed by what moved the money,
never by the event: the ledger's unique ``(provider, ref, entry_type)`` posts one credit per
payment and one reversal per refund (`refunds`) whatever arrives, and order states only move
forward. Every event about an order first locks that order's row, so two events about one
payment never decide on the same stale view. Anything that does not match its order is written
down as a payment exception for an operator, never accepted silently.
"""

from __future__ import annotations

from datetime import datetime

from whatsorder.ordering.model import OrderStatus, order_id_from_number
from whatsorder.ordering.payment_model import (
    ExceptionKind,
    PayableOrder,
    PaymentEvent,
    PaymentException,
    PaymentKind,
    PaymentOutcome,
    PaymentResult,
    credit_for,
    mismatches,
    noted,
)
from whatsorder.ordering.ports import UnitOfWork
from whatsorder.ordering.services.refunds import current_status, refunded


async def apply_payment(uow: UnitOfWork, event: PaymentEvent, now: datetime) -> PaymentOutcome:
    """Record the event and do to the order and the ledger what it says, once per payment.

    Safe to run again for the same event, or for another event about the same payment: every
    write is insert-if-absent on a business key, and order states only move forward.
    """
    async with uow:
        order_id = None if event.order_number is None else order_id_from_number(event.order_number)
        # Locked: events about one order (a payment and its refunds) take turns.
        order = None if order_id is None else await uow.payments.lock_order(order_id)
        if order is None:
            named = event.order_number or "no order"
            await uow.payments.record_exception(
                event,
                None,
                PaymentException(
                    ExceptionKind.UNKNOWN_ORDER,
                    f"The {event.kind.value} payment {event.payment_id} names {named!r}, "
                    "not an order of ours.",
                    received_amount=event.amount,
                    currency=event.currency.upper(),
                ),
                now,
            )
            await uow.commit()
            return PaymentOutcome(
                PaymentResult.UNKNOWN_ORDER, exceptions=(ExceptionKind.UNKNOWN_ORDER,)
            )

        await uow.payments.record_event(event, order.id, now)
        if event.kind is PaymentKind.SUCCEEDED:
            outcome = await _succeeded(uow, event, order, now)
        elif event.kind is PaymentKind.REFUNDED:
            outcome = await refunded(uow, event, order, now)
        elif event.kind is PaymentKind.REFUND_PENDING:
            # Asked for, not done: the money moves when the provider says it was processed.
            outcome = PaymentOutcome(PaymentResult.REFUND_PENDING, order.id, order.status)
        elif event.kind is PaymentKind.REFUND_FAILED:
            # Nothing was ever posted for a refund before it was processed: nothing to undo.
            outcome = PaymentOutcome(PaymentResult.REFUND_FAILED, order.id, order.status)
        else:
            # "failed" is never final (a later capture still pays): nothing moves.
            outcome = PaymentOutcome(PaymentResult.FAILURE_RECORDED, order.id, order.status)
        await uow.commit()
    return outcome


async def _succeeded(
    uow: UnitOfWork, event: PaymentEvent, order: PayableOrder, now: datetime
) -> PaymentOutcome:
    wrong = mismatches(order, event)
    if wrong:
        for mismatch in wrong:
            await uow.payments.record_exception(event, order.id, mismatch, now)
        return PaymentOutcome(
            PaymentResult.MISMATCH, order.id, order.status, tuple(m.kind for m in wrong)
        )
    if not await uow.payments.post_entry(order, credit_for(event), now):
        return PaymentOutcome(
            PaymentResult.ALREADY_CREDITED, order.id, await current_status(uow, order)
        )
    if await uow.ordering.set_order_status(order.id, OrderStatus.PLACED, OrderStatus.PAID, now):
        return PaymentOutcome(PaymentResult.CREDITED, order.id, OrderStatus.PAID)
    # Re-read: on PostgreSQL a concurrent change we waited for is visible now.
    status = await current_status(uow, order)
    refunded_first = await uow.payments.refunded(event.provider, event.payment_id)
    late = _late_credit(order, status, event, refunded_first)
    if late is None:
        return PaymentOutcome(PaymentResult.CREDITED, order.id, status)
    await uow.payments.record_exception(event, order.id, late, now)
    return PaymentOutcome(PaymentResult.CREDITED, order.id, status, (late.kind,))


def _late_credit(
    order: PayableOrder, status: OrderStatus, event: PaymentEvent, refunded_first: int
) -> PaymentException | None:
    """What to tell an operator about money that reached an order no longer waiting for it.

    ``refunded_first``: how much of this very payment was refunded before its credit came.
    """
    if status is OrderStatus.CANCELLED:
        # The money arrived all the same: it is on the ledger, and someone must refund it.
        return noted(
            ExceptionKind.PAID_AFTER_CANCEL,
            f"{order.number} was cancelled before this payment arrived; refund it.",
            order,
            event,
        )
    if status is OrderStatus.PAID:
        return noted(
            ExceptionKind.PAID_TWICE,
            f"{order.number} was already paid by another payment; refund one of them.",
            order,
            event,
        )
    if refunded_first >= event.amount:
        # REFUNDED by this payment's own refund, which came first and was noted then: this
        # credit completes the pair.
        return None
    return noted(
        ExceptionKind.PAID_AFTER_REFUND,
        f"{order.number} was refunded before this payment arrived; refund it.",
        order,
        event,
    )
