"""Payments: what a provider's payment event does to an order and the ledger.

Providers deliver at least once, in any order, and may announce one payment under several event
ids (Razorpay's ``payment.captured`` and ``order.paid``; Stripe's ``checkout.session.completed``
and ``payment_intent.succeeded``). So every money movement is keyed by the payment, never by the
event: the ledger's unique ``(provider, payment_id, entry_type)`` posts one credit and one
reversal per payment whatever arrives, and order states only move forward. Anything that does
not match its order is written down as a payment exception for an operator, never accepted
silently.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from whatsorder.ordering.model import (
    EntryType,
    LedgerEntry,
    OrderStatus,
    order_id_from_number,
    order_number,
)

if TYPE_CHECKING:
    from whatsorder.db.uow import SqlUnitOfWork


class PaymentKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    REFUNDED = "refunded"
    FAILED = "failed"


class ExceptionKind(enum.StrEnum):
    """Why an operator should look at a payment event."""

    UNKNOWN_ORDER = "unknown_order"
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    REFUND_BEFORE_PAYMENT = "refund_before_payment"
    REFUND_MISMATCH = "refund_mismatch"
    PAID_AFTER_CANCEL = "paid_after_cancel"
    PAID_TWICE = "paid_twice"


class PaymentResult(enum.StrEnum):
    """What applying one event did."""

    CREDITED = "credited"
    ALREADY_CREDITED = "already_credited"
    REVERSED = "reversed"
    ALREADY_REVERSED = "already_reversed"
    FAILURE_RECORDED = "failure_recorded"
    MISMATCH = "mismatch"
    UNKNOWN_ORDER = "unknown_order"


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """One provider event about one payment, in our terms. ``amount`` is in minor units."""

    provider: str  # "stripe", "razorpay": the ledger source of its entries
    event_id: str
    kind: PaymentKind
    payment_id: str
    order_number: str | None  # as the payment's metadata names it; None when it names none
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class PayableOrder:
    """What a payment is checked against."""

    id: int
    retailer_id: int
    status: OrderStatus
    total: int
    currency: str

    @property
    def number(self) -> str:
        return order_number(self.id)


@dataclass(frozen=True, slots=True)
class PaymentException:
    kind: ExceptionKind
    detail: str
    expected_amount: int | None = None
    received_amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    result: PaymentResult
    order_id: int | None = None
    order_status: OrderStatus | None = None
    exceptions: tuple[ExceptionKind, ...] = ()

    @property
    def order_number(self) -> str | None:
        return None if self.order_id is None else order_number(self.order_id)


def same_currency(first: str, second: str) -> bool:
    return first.strip().upper() == second.strip().upper()


def mismatches(order: PayableOrder, event: PaymentEvent) -> list[PaymentException]:
    """How a payment's money differs from what the order asks; empty when it matches."""
    found: list[PaymentException] = []
    if not same_currency(order.currency, event.currency):
        found.append(
            _noted(
                ExceptionKind.CURRENCY_MISMATCH,
                f"{order.number} is in {order.currency}; the payment is in "
                f"{event.currency.upper()}.",
                order,
                event,
            )
        )
    if event.amount != order.total:
        found.append(
            _noted(
                ExceptionKind.AMOUNT_MISMATCH,
                f"{order.number} totals {order.total}; the payment is {event.amount}.",
                order,
                event,
            )
        )
    return found


def credit_for(event: PaymentEvent) -> LedgerEntry:
    """The money in: keyed by the payment, so any number of events post it once."""
    return LedgerEntry(
        EntryType.PAYMENT_CREDIT,
        event.amount,
        event.currency.upper(),
        event.provider,
        event.payment_id,
    )


def refund_reversal_for(event: PaymentEvent) -> LedgerEntry:
    """The money back out, once per payment."""
    return LedgerEntry(
        EntryType.REFUND_REVERSAL,
        -event.amount,
        event.currency.upper(),
        event.provider,
        event.payment_id,
    )


async def apply_payment(uow: SqlUnitOfWork, event: PaymentEvent, now: datetime) -> PaymentOutcome:
    """Record the event and do to the order and the ledger what it says, once per payment.

    Safe to run again for the same event, or for another event about the same payment: every
    write is insert-if-absent on a business key, and order states only move forward.
    """
    async with uow:
        order_id = None if event.order_number is None else order_id_from_number(event.order_number)
        order = None if order_id is None else await uow.payments.order(order_id)
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
            outcome = await _refunded(uow, event, order, now)
        else:
            # "failed" is never final (a later capture still pays): nothing moves.
            outcome = PaymentOutcome(PaymentResult.FAILURE_RECORDED, order.id, order.status)
        await uow.commit()
    return outcome


async def _succeeded(
    uow: SqlUnitOfWork, event: PaymentEvent, order: PayableOrder, now: datetime
) -> PaymentOutcome:
    wrong = mismatches(order, event)
    if wrong:
        for mismatch in wrong:
            await uow.payments.record_exception(event, order.id, mismatch, now)
        return PaymentOutcome(
            PaymentResult.MISMATCH, order.id, order.status, tuple(m.kind for m in wrong)
        )
    if not await uow.payments.post_entry(order, credit_for(event), now):
        return PaymentOutcome(PaymentResult.ALREADY_CREDITED, order.id, await _status(uow, order))
    if await uow.ordering.set_order_status(order.id, OrderStatus.PLACED, OrderStatus.PAID, now):
        return PaymentOutcome(PaymentResult.CREDITED, order.id, OrderStatus.PAID)
    # Re-read: on PostgreSQL a concurrent change we waited for is visible now.
    status = await _status(uow, order)
    late = _late_credit(order, status, event)
    if late is None:
        return PaymentOutcome(PaymentResult.CREDITED, order.id, status)
    await uow.payments.record_exception(event, order.id, late, now)
    return PaymentOutcome(PaymentResult.CREDITED, order.id, status, (late.kind,))


def _late_credit(
    order: PayableOrder, status: OrderStatus, event: PaymentEvent
) -> PaymentException | None:
    """What to tell an operator about money that reached an order no longer waiting for it."""
    if status is OrderStatus.CANCELLED:
        # The money arrived all the same: it is on the ledger, and someone must refund it.
        return _noted(
            ExceptionKind.PAID_AFTER_CANCEL,
            f"{order.number} was cancelled before this payment arrived; refund it.",
            order,
            event,
        )
    if status is OrderStatus.PAID:
        return _noted(
            ExceptionKind.PAID_TWICE,
            f"{order.number} was already paid by another payment; refund one of them.",
            order,
            event,
        )
    # REFUNDED: the refund came first and was noted then; this credit completes the pair.
    return None


async def _refunded(
    uow: SqlUnitOfWork, event: PaymentEvent, order: PayableOrder, now: datetime
) -> PaymentOutcome:
    if not await uow.payments.post_entry(order, refund_reversal_for(event), now):
        return PaymentOutcome(PaymentResult.ALREADY_REVERSED, order.id, await _status(uow, order))
    noted: list[PaymentException] = []
    if not await uow.payments.has_entry(event.provider, event.payment_id, EntryType.PAYMENT_CREDIT):
        # Providers promise no order: the success will still come and post its credit.
        noted.append(
            _noted(
                ExceptionKind.REFUND_BEFORE_PAYMENT,
                f"The refund of {event.payment_id} arrived before its payment.",
                order,
                event,
            )
        )
    if mismatches(order, event):
        # A partial (or foreign-currency) refund: the money left, but the order is not
        # refunded as a whole. An operator decides.
        noted.append(
            _noted(
                ExceptionKind.REFUND_MISMATCH,
                f"{order.number} totals {order.total} {order.currency}; the refund is "
                f"{event.amount} {event.currency.upper()}.",
                order,
                event,
            )
        )
    else:
        for expected in (OrderStatus.PLACED, OrderStatus.PAID):
            if await uow.ordering.set_order_status(order.id, expected, OrderStatus.REFUNDED, now):
                break
    for exception in noted:
        await uow.payments.record_exception(event, order.id, exception, now)
    return PaymentOutcome(
        PaymentResult.REVERSED,
        order.id,
        await _status(uow, order),
        tuple(exception.kind for exception in noted),
    )


def _noted(
    kind: ExceptionKind, detail: str, order: PayableOrder, event: PaymentEvent
) -> PaymentException:
    return PaymentException(kind, detail, order.total, event.amount, event.currency.upper())


async def _status(uow: SqlUnitOfWork, order: PayableOrder) -> OrderStatus:
    current = await uow.payments.order(order.id)
    assert current is not None  # orders are never deleted
    return current.status
