"""What the books must say: a plain, in-memory model of orders, stock, payments and refunds.

No database and no app: the rules of ordering and payments, written as plainly as they can
be, for the stateful test in test_books_model.py to compare the real system against. Each
delivery is applied with `Books.deliver`, which says how the system's answer differs from what
it should have answered.

The rules: an order takes its stock and debits its total; a cancel (of a placed order only)
returns both. A capture of the order's total credits it once per payment and pays a placed
order; a refund posts once per refund id (Razorpay) or up to the refunded total reported
(Stripe), and the order is refunded once its refunds reach all it was paid, or its total.

Money is integer paise, as in the system.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from whatsorder.ordering.demo import DEMO_CATALOGUE

PRICES = {product.sku: product.unit_price for product in DEMO_CATALOGUE}
INITIAL_STOCK = {product.sku: product.stock for product in DEMO_CATALOGUE}


@dataclass(frozen=True)
class Answer:
    """What a response says, in the few words the model can predict.

    Twilio: ``placed`` (with the order's number), ``rejected``, ``cancelled``,
    ``cannot_cancel``. Payments: the ``result``, the ``order_status`` and the ``exceptions``.
    """

    kind: str
    number: str | None = None
    order_status: str | None = None
    exceptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observed:
    """One response as the test saw it."""

    status_code: int
    replayed: bool
    content: bytes
    answer: Answer | None  # None when the body is not a webhook answer (a problem, say)


# --- What a delivery asks for -----------------------------------------------------------------


@dataclass(frozen=True)
class PlaceOrder:
    lines: tuple[tuple[str, int], ...]  # (SKU, quantity), each SKU once


@dataclass(frozen=True)
class CancelOrder:
    number: str


@dataclass(frozen=True)
class Capture:
    """A capture (Stripe's payment_intent.succeeded, Razorpay's payment.captured/order.paid)."""

    provider: str
    payment_id: str
    number: str
    amount: int


@dataclass(frozen=True)
class PaymentFailed:
    provider: str
    payment_id: str
    number: str


@dataclass(frozen=True)
class RefundById:
    """A Razorpay refund event; only ``processed`` moves money."""

    payment_id: str
    number: str
    refund_id: str
    amount: int
    state: str  # "created", "processed", "failed"


@dataclass(frozen=True)
class RefundToTotal:
    """Stripe's charge.refunded: the payment's refunded total so far (cumulative)."""

    payment_id: str
    number: str
    total: int


Effect = PlaceOrder | CancelOrder | Capture | PaymentFailed | RefundById | RefundToTotal


# --- The books -------------------------------------------------------------------------------


@dataclass
class Order:
    number: str
    lines: tuple[tuple[str, int], ...]
    total: int
    status: str = "placed"


@dataclass
class Payment:
    """One payment as the provider knows it, and what our ledger must hold for it."""

    provider: str
    payment_id: str
    number: str
    amount: int  # what a right capture is for: the order's total
    credited: int = 0
    refunded: int = 0
    refund_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class State:
    """Everything the model and the database are compared on."""

    statuses: dict[str, str]
    stock: dict[str, int]
    order_net: dict[str, int]  # the sum of every ledger entry of the order
    credits: dict[tuple[str, str], int]  # (provider, payment) → credited
    reversals: dict[tuple[str, str], int]  # (provider, payment) → refunded (positive)


@dataclass
class Books:
    stock: dict[str, int] = field(default_factory=lambda: dict(INITIAL_STOCK))
    orders: dict[str, Order] = field(default_factory=dict)
    payments: dict[tuple[str, str], Payment] = field(default_factory=dict)
    answers: dict[str, bytes] = field(default_factory=dict)  # idempotency key → first response

    def copy(self) -> Books:
        return copy.deepcopy(self)

    def deliver(self, key: str, effect: Effect, observed: Observed) -> list[str]:
        """Apply one delivery under its idempotency key; how the response differs from ours.

        The first delivery of a key does what its effect says; any later one is a replay of
        the first answer, byte for byte, and changes nothing.
        """
        first = self.answers.get(key)
        if first is not None:
            if observed.status_code == 200 and observed.replayed and observed.content == first:
                return []
            return [f"{key}: expected a replay of {first!r}, got {observed}"]
        if observed.status_code != 200 or observed.replayed:
            return [f"{key}: expected a first answer, got {observed}"]
        expected = self.apply(effect, observed.answer)
        self.answers[key] = observed.content
        if observed.answer != expected:
            return [f"{key} ({effect}): expected {expected}, got {observed.answer}"]
        return []

    def apply(self, effect: Effect, observed: Answer | None) -> Answer:
        """Do what the effect does to the books; the answer the system should give.

        ``observed`` lends only what the model cannot know: the number a new order got.
        """
        if isinstance(effect, PlaceOrder):
            number = None if observed is None else observed.number
            return self.place(effect.lines, number)
        if isinstance(effect, CancelOrder):
            return self.cancel(effect.number)
        if isinstance(effect, Capture):
            return self.capture(effect)
        if isinstance(effect, PaymentFailed):
            self.payment(effect.provider, effect.payment_id, effect.number)
            return self.answer("failure_recorded", effect.number)
        if isinstance(effect, RefundById):
            return self.refund_by_id(effect)
        return self.refund_to_total(effect)

    def place(self, lines: tuple[tuple[str, int], ...], number: str | None) -> Answer:
        if any(quantity > self.stock[sku] for sku, quantity in lines):
            return Answer("rejected")
        if number is None or number in self.orders:
            return Answer("placed")  # the system must have placed it, under a new number
        for sku, quantity in lines:
            self.stock[sku] -= quantity
        total = sum(PRICES[sku] * quantity for sku, quantity in lines)
        self.orders[number] = Order(number, lines, total)
        return Answer("placed", number)

    def cancel(self, number: str) -> Answer:
        order = self.orders[number]
        if order.status != "placed":
            return Answer("cannot_cancel")
        order.status = "cancelled"
        for sku, quantity in order.lines:
            self.stock[sku] += quantity
        return Answer("cancelled")

    def capture(self, event: Capture) -> Answer:
        order = self.orders[event.number]
        payment = self.payment(event.provider, event.payment_id, event.number)
        if event.amount != order.total:
            return self.answer("mismatch", event.number, "amount_mismatch")
        if payment.credited:
            return self.answer("already_credited", event.number)
        payment.credited = event.amount
        if order.status == "placed":
            order.status = "paid"
            return self.answer("credited", event.number)
        # The money came all the same; an operator must hear of it unless this payment's own
        # refund came first.
        late = {
            "cancelled": ("paid_after_cancel",),
            "paid": ("paid_twice",),
            "refunded": () if payment.refunded >= event.amount else ("paid_after_refund",),
        }
        return self.answer("credited", event.number, *late[order.status])

    def refund_by_id(self, event: RefundById) -> Answer:
        payment = self.payment("razorpay", event.payment_id, event.number)
        if event.state != "processed":
            return self.answer(
                f"refund_{'pending' if event.state == 'created' else 'failed'}", event.number
            )
        if event.refund_id in payment.refund_ids:
            return self.answer("already_reversed", event.number)
        payment.refund_ids.add(event.refund_id)
        return self.reverse(payment, event.amount)

    def refund_to_total(self, event: RefundToTotal) -> Answer:
        payment = self.payment("stripe", event.payment_id, event.number)
        missing = event.total - payment.refunded
        if missing <= 0:  # a total already reached: it arrived late, or again
            return self.answer("already_reversed", event.number)
        return self.reverse(payment, missing)

    def reverse(self, payment: Payment, amount: int) -> Answer:
        """Post a refund of ``amount``; the order is refunded once all its money is back."""
        payment.refunded += amount
        noted: tuple[str, ...] = ()
        if not payment.credited:
            noted = ("refund_before_payment",)
        elif payment.refunded > payment.credited:
            noted = ("refund_exceeds_payment",)
        order = self.orders[payment.number]
        mine = [p for p in self.payments.values() if p.number == order.number]
        credited = sum(p.credited for p in mine)
        refunded = sum(p.refunded for p in mine)
        if order.status in {"placed", "paid"} and refunded >= max(order.total, credited):
            order.status = "refunded"
        return self.answer("reversed", order.number, *noted)

    def payment(self, provider: str, payment_id: str, number: str) -> Payment:
        key = (provider, payment_id)
        if key not in self.payments:
            self.payments[key] = Payment(provider, payment_id, number, self.orders[number].total)
        return self.payments[key]

    def answer(self, result: str, number: str, *exceptions: str) -> Answer:
        return Answer(result, number, self.orders[number].status, exceptions)

    def state(self) -> State:
        net = {number: -order.total for number, order in self.orders.items()}
        for number, order in self.orders.items():
            if order.status == "cancelled":
                net[number] += order.total
        for payment in self.payments.values():
            net[payment.number] += payment.credited - payment.refunded
        return State(
            statuses={number: order.status for number, order in self.orders.items()},
            stock=dict(self.stock),
            order_net=net,
            credits={key: p.credited for key, p in self.payments.items() if p.credited},
            reversals={key: p.refunded for key, p in self.payments.items() if p.refunded},
        )
