"""The ordering domain: plain Python, no framework, no database.

Money is integer minor units (paise for INR) throughout.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from whatsorder.ordering.i18n import ENGLISH, N_, Phrase

MAX_QUANTITY_PER_LINE = 1000
MAX_LINES_PER_ORDER = 25
ORDER_NUMBER_PREFIX = "ORD-"
_ORDER_DIGITS = re.compile(r"\d{1,12}")  # decimal digits only: "²" passes isdigit() but not int()


# Outbound message states in the order they happen; a status never moves back down.
MESSAGE_STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "failed": 4,
    "undelivered": 4,
    "delivered": 4,
    "read": 5,
    "canceled": 5,
}


def message_status_rank(status: str) -> int:
    """How far along an outbound message is; unknown states rank lowest."""
    return MESSAGE_STATUS_RANK.get(status, -1)


@dataclass(frozen=True, slots=True)
class MessageState:
    """A provider's word on how far one outbound message got."""

    message_id: str
    status: str
    error_code: str | None = None


def furthest_states(states: Iterable[MessageState]) -> list[MessageState]:
    """Each message's furthest state (the first of equal rank, as one at a time would keep
    it), in message id order: the order every transaction writes them in, so two never
    deadlock."""
    kept: dict[str, MessageState] = {}
    for state in states:
        before = kept.get(state.message_id)
        if before is None or message_status_rank(state.status) > message_status_rank(before.status):
            kept[state.message_id] = state
    return [kept[message_id] for message_id in sorted(kept)]


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A customer's message, whichever provider brought it."""

    source: str  # "twilio", "meta"
    message_id: str  # the provider's id: the business key of anything it creates
    sender: str  # the WhatsApp identity, e.g. "whatsapp:+919876543210"
    sender_name: str
    text: str
    sent_at: datetime | None = None  # when the customer sent it, if the provider says (Meta)


class OrderRejected(Exception):
    """An order that cannot be placed as asked; ``problems`` say why, for the customer (and
    ``str()`` says it in English)."""

    def __init__(self, *problems: Phrase) -> None:
        self.problems = problems
        super().__init__(self.said_in(ENGLISH))

    def said_in(self, language: str | None) -> str:
        """The problems as one sentence in ``language``."""
        joined = "; ".join(problem.said_in(language) for problem in self.problems)
        # Translators: an order's problems, joined by "; ", made one sentence.
        return Phrase.of(N_("%(problems)s."), problems=joined).said_in(language)


class OrderStatus(enum.StrEnum):
    PLACED = "placed"
    PAID = "paid"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class Fulfilment(enum.StrEnum):
    """Where the goods are, apart from the payment (``OrderStatus``); the rules of moving
    between these are in ``whatsorder.ordering.fulfilment``."""

    PLACED = "placed"
    CONFIRMED = "confirmed"
    PACKED = "packed"
    DISPATCHED = "dispatched"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class EntryType(enum.StrEnum):
    ORDER_DEBIT = "order_debit"
    ORDER_REVERSAL = "order_reversal"
    PAYMENT_CREDIT = "payment_credit"
    REFUND_REVERSAL = "refund_reversal"


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    unit_price: int
    currency: str
    stock: int
    id: int | None = None


@dataclass(frozen=True, slots=True)
class RequestedLine:
    """A line as the customer wrote it, before it meets the catalogue."""

    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: int | None
    sku: str
    name: str
    quantity: int
    unit_price: int

    @property
    def total(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True, slots=True)
class Order:
    lines: tuple[OrderLine, ...]
    currency: str
    status: OrderStatus = OrderStatus.PLACED
    id: int | None = None
    number: str | None = None
    retailer_id: int | None = None
    fulfilment: Fulfilment = Fulfilment.PLACED

    @property
    def total(self) -> int:
        return sum(line.total for line in self.lines)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A signed amount on a retailer's account: debits negative, credits positive."""

    entry_type: EntryType
    amount: int
    currency: str
    source: str
    source_ref: str
    payment_ref: str | None = None  # the provider's payment a credit or refund reversal is of


@dataclass(frozen=True, slots=True)
class Catalogue:
    products: Mapping[str, Product] = field(default_factory=dict)

    @classmethod
    def of(cls, products: Iterable[Product]) -> Catalogue:
        return cls({product.sku: product for product in products})


def order_number(order_id: int) -> str:
    return f"{ORDER_NUMBER_PREFIX}{order_id:06d}"


def order_id_from_number(number: str) -> int | None:
    """``ORD-000123`` (any case, leading zeros optional) → 123; None for anything else."""
    text = number.strip().upper()
    if not text.startswith(ORDER_NUMBER_PREFIX):
        return None
    digits = text[len(ORDER_NUMBER_PREFIX) :]
    if not _ORDER_DIGITS.fullmatch(digits):
        return None
    return int(digits)


def merge_lines(requested: Iterable[RequestedLine]) -> tuple[RequestedLine, ...]:
    """One line per SKU, in the order first mentioned; ``2 x A, 1 x A`` is ``3 x A``."""
    totals: dict[str, int] = {}
    for line in requested:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return tuple(RequestedLine(sku, quantity) for sku, quantity in totals.items())


def price_order(requested: Iterable[RequestedLine], catalogue: Catalogue) -> Order:
    """Turn requested lines into a priced order, or say what is wrong with them.

    Prices come from our catalogue only. Every problem is reported at once, so the customer can
    fix the whole message in one go.
    """
    requested = tuple(requested)
    # Checked before merging, so "5 x A, -3 x A" cannot take back part of a line.
    bad_quantity = {
        line.sku for line in requested if not 1 <= line.quantity <= MAX_QUANTITY_PER_LINE
    }
    lines = merge_lines(requested)
    if not lines:
        raise OrderRejected(Phrase.of(N_("Your order has no items")))
    if len(lines) > MAX_LINES_PER_ORDER:
        raise OrderRejected(
            Phrase.of(
                N_("An order can have at most %(limit)d different items"),
                limit=MAX_LINES_PER_ORDER,
            )
        )
    problems: list[Phrase] = []
    priced: list[OrderLine] = []
    for line in lines:
        product = catalogue.products.get(line.sku)
        if product is None:
            problems.append(Phrase.of(N_("%(sku)s is not in our catalogue"), sku=line.sku))
            continue
        if line.sku in bad_quantity or not 1 <= line.quantity <= MAX_QUANTITY_PER_LINE:
            problems.append(
                Phrase.of(
                    N_("%(sku)s: quantity must be between 1 and %(limit)d"),
                    sku=line.sku,
                    limit=MAX_QUANTITY_PER_LINE,
                )
            )
            continue
        if line.quantity > product.stock:
            problems.append(
                Phrase.of(N_("%(sku)s: only %(stock)d in stock"), sku=line.sku, stock=product.stock)
            )
            continue
        priced.append(
            OrderLine(product.id, product.sku, product.name, line.quantity, product.unit_price)
        )
    if problems:
        raise OrderRejected(*problems)
    currencies = {line_product.currency for line_product in _products(lines, catalogue)}
    if len(currencies) != 1:
        raise OrderRejected(
            Phrase.of(N_("These items cannot be ordered together (different currencies)"))
        )
    return Order(lines=tuple(priced), currency=currencies.pop())


def _products(lines: Iterable[RequestedLine], catalogue: Catalogue) -> Iterable[Product]:
    return (catalogue.products[line.sku] for line in lines)


def debit_for(order: Order) -> LedgerEntry:
    assert order.number is not None
    return LedgerEntry(EntryType.ORDER_DEBIT, -order.total, order.currency, "order", order.number)


def reversal_for(order: Order) -> LedgerEntry:
    assert order.number is not None
    return LedgerEntry(EntryType.ORDER_REVERSAL, order.total, order.currency, "order", order.number)


def in_lock_order(lines: Iterable[OrderLine]) -> list[OrderLine]:
    """Lines in the one order every transaction locks product rows in (by SKU).

    Placing and cancelling both lock several products; taken in any other order, two of them
    could each hold a row the other waits for, and PostgreSQL would end one as a deadlock.
    """
    return sorted(lines, key=lambda line: line.sku)
