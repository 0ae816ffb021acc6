"""Payments in our terms: the events providers send, what they are checked against, and what
applying one did. Plain data and rules, no storage: payments.py and refunds.py apply them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from whatsorder.ordering.model import EntryType, LedgerEntry, OrderStatus, order_number


class PaymentKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUNDED = "refunded"  # money went back to the customer
    REFUND_PENDING = "refund_pending"  # a refund was asked for: no money has moved yet
    REFUND_FAILED = "refund_failed"  # a refund did not happen: no money moved


class ExceptionKind(enum.StrEnum):
    """Why an operator should look at a payment event."""

    UNKNOWN_ORDER = "unknown_order"
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    REFUND_BEFORE_PAYMENT = "refund_before_payment"
    REFUND_MISMATCH = "refund_mismatch"
    REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"
    PAID_AFTER_CANCEL = "paid_after_cancel"
    PAID_AFTER_REFUND = "paid_after_refund"
    PAID_TWICE = "paid_twice"


class PaymentResult(enum.StrEnum):
    """What applying one event did."""

    CREDITED = "credited"
    ALREADY_CREDITED = "already_credited"
    REVERSED = "reversed"
    ALREADY_REVERSED = "already_reversed"
    REFUND_PENDING = "refund_pending"
    REFUND_FAILED = "refund_failed"
    FAILURE_RECORDED = "failure_recorded"
    MISMATCH = "mismatch"
    UNKNOWN_ORDER = "unknown_order"


@dataclass(frozen=True, slots=True)
class Refund:
    """One refund of a payment, as the provider lists it."""

    refund_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """One provider event about one payment, in our terms. Amounts are in minor units.

    A refund event either names its refund (``refund_id``; ``amount`` is that refund's) or
    gives the payment's refunded total so far (``refund_id`` None; ``amount`` is the total, as
    Stripe's ``amount_refunded``, with the refunds it knows of in ``refunds``, oldest first).
    """

    provider: str  # "stripe", "razorpay": the ledger source of its entries
    event_id: str
    kind: PaymentKind
    payment_id: str
    order_number: str | None  # as the payment's metadata names it; None when it names none
    amount: int
    currency: str
    refund_id: str | None = None
    refunds: tuple[Refund, ...] = ()


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


class LinkStatus(enum.StrEnum):
    """A payment link's state: live until paid, expired or cancelled; failed when the provider
    refused to make it (its message kept for the operator)."""

    LIVE = "live"
    PAID = "paid"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StoredLink:
    """A payment link for ``amount`` of an order, keyed by provider and reference."""

    order_id: int
    provider: str
    reference: str  # the order, the amount and the currency: ORD-000123-53000-INR
    amount: int
    currency: str
    status: LinkStatus = LinkStatus.LIVE
    url: str | None = None
    provider_link_id: str | None = None
    last_error: str | None = None


def link_reference(order_id: int, amount: int, currency: str) -> str:
    """The key a link is made and found by, here and at the provider."""
    return f"{order_number(order_id)}-{amount}-{currency.upper()}"


def same_currency(first: str, second: str) -> bool:
    return first.strip().upper() == second.strip().upper()


def mismatches(order: PayableOrder, event: PaymentEvent) -> list[PaymentException]:
    """How a payment's money differs from what the order asks; empty when it matches."""
    found: list[PaymentException] = []
    if not same_currency(order.currency, event.currency):
        found.append(
            noted(
                ExceptionKind.CURRENCY_MISMATCH,
                f"{order.number} is in {order.currency}; the payment is in "
                f"{event.currency.upper()}.",
                order,
                event,
            )
        )
    if event.amount != order.total:
        found.append(
            noted(
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
        event.payment_id,
    )


def noted(
    kind: ExceptionKind, detail: str, order: PayableOrder, event: PaymentEvent
) -> PaymentException:
    """An exception about ``event`` on ``order``, with the amounts an operator compares."""
    return PaymentException(kind, detail, order.total, event.amount, event.currency.upper())
