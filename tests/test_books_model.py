"""The books say what a plain model of them says, after any story of orders and payments.

A hypothesis state machine places and cancels orders over Twilio, pays them by Stripe and by
Razorpay (right and wrong amounts, failures first, refunds before payments), refunds parts of
payments (Razorpay by refund id, Stripe by cumulative total, late lower totals included),
announces refunds that are only created and then fail, and redelivers earlier requests byte
for byte. Every answer is compared with the model's (books_model.py); after every step the
database holds the model's order statuses, stock, per-order ledger sums and per-payment
credits and reversals, and ``reports.audit`` finds nothing wrong.

SQLite takes the steps one at a time. On PostgreSQL a step may also fire two to four requests
at once about one order: duplicates, refunds of one payment, a cancel against a payment. What
wins is not the model's to say, so the answers must agree with the model applied in *some*
order of those requests, and the database must hold that order's books.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from books_model import (
    PRICES,
    Answer,
    Books,
    CancelOrder,
    Capture,
    Effect,
    Observed,
    Payment,
    PaymentFailed,
    PlaceOrder,
    RefundById,
    RefundToTotal,
    State,
)
from support import (
    INBOUND_PATH,
    RAZORPAY_PATH,
    RAZORPAY_SECRET,
    STRIPE_PATH,
    STRIPE_SECRET,
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
)
from whatsorder.db import reports
from whatsorder.db.engine import open_database
from whatsorder.db.seed import seed_demo
from whatsorder.db.tables import ledger_entries, metadata, orders, products
from whatsorder.ordering.model import EntryType, order_number

SKUS = sorted(PRICES)
EXAMPLES = 10
STEPS = 30


@dataclass(frozen=True)
class Delivery:
    """One request as its provider sends it, and what it asks of the books.

    ``headers`` is called at each send: Stripe dates its signature, so a redelivery carries
    the same bytes under a new timestamp, as Stripe's own retries do.
    """

    key: str  # the idempotency key: Twilio's MessageSid, the provider's event id
    path: str
    body: bytes
    headers: Callable[[], dict[str, str]]
    effect: Effect


def twilio_message(text_: str, effect: Effect) -> Delivery:
    sid = "SM" + secrets.token_hex(16)
    pairs = inbound_form(text_, sid=sid)
    headers = signed_headers(INBOUND_PATH, pairs)
    return Delivery(f"twilio:{sid}", INBOUND_PATH, encode(pairs), lambda: headers, effect)


def stripe_delivery(event: dict[str, Any], effect: Effect) -> Delivery:
    body = stripe_body(event)
    return Delivery(
        f"stripe:{event['id']}", STRIPE_PATH, body, lambda: stripe_headers(body), effect
    )


def razorpay_delivery(body: bytes, effect: Effect) -> Delivery:
    event_id = new_razorpay_event_id()
    headers = razorpay_headers(body, event_id)
    return Delivery(f"razorpay:{event_id}", RAZORPAY_PATH, body, lambda: headers, effect)


def place(lines: tuple[tuple[str, int], ...]) -> Delivery:
    written = ", ".join(f"{quantity} x {sku}" for sku, quantity in lines)
    return twilio_message(f"ORDER {written}", PlaceOrder(lines))


def cancel(number: str) -> Delivery:
    return twilio_message(f"CANCEL {number}", CancelOrder(number))


def capture(provider: str, payment_id: str, number: str, amount: int, *, again: bool) -> Delivery:
    """A capture; ``again``: Razorpay's second announcement of a payment (order.paid)."""
    effect = Capture(provider, payment_id, number, amount)
    if provider == "stripe":
        return stripe_delivery(stripe_event(number, amount, payment_id=payment_id), effect)
    event = "order.paid" if again else "payment.captured"
    return razorpay_delivery(
        razorpay_event(number, amount, event=event, payment_id=payment_id), effect
    )


def payment_failed(provider: str, payment_id: str, number: str, amount: int) -> Delivery:
    effect = PaymentFailed(provider, payment_id, number)
    if provider == "stripe":
        event = stripe_event(
            number, amount, event_type="payment_intent.payment_failed", payment_id=payment_id
        )
        return stripe_delivery(event, effect)
    body = razorpay_event(number, amount, event="payment.failed", payment_id=payment_id)
    return razorpay_delivery(body, effect)


def stripe_refund(payment_id: str, number: str, total: int) -> Delivery:
    event = stripe_event(number, total, event_type="charge.refunded", payment_id=payment_id)
    return stripe_delivery(event, RefundToTotal(payment_id, number, total))


def razorpay_refund(
    payment_id: str, number: str, refund_id: str, amount: int, state: str = "processed"
) -> Delivery:
    body = razorpay_event(
        number, amount, event=f"refund.{state}", payment_id=payment_id, refund_id=refund_id
    )
    return razorpay_delivery(body, RefundById(payment_id, number, refund_id, amount, state))


def new_payment_id(provider: str) -> str:
    return ("pi_" if provider == "stripe" else "pay_") + secrets.token_hex(8)


# --- What the app answered, and what the database holds ----------------------------------------


def observe(delivery: Delivery, response: httpx.Response) -> Observed:
    return Observed(
        response.status_code,
        response.headers.get("idempotent-replayed") == "true",
        response.content,
        answer_of(delivery, response) if response.status_code == 200 else None,
    )


def answer_of(delivery: Delivery, response: httpx.Response) -> Answer:
    if delivery.path != INBOUND_PATH:
        said = json.loads(response.content)
        return Answer(
            said["result"], said["order"], said["order_status"], tuple(said["exceptions"])
        )
    reply = reply_text(response)
    placed = re.match(r"Order (ORD-\d+) placed:", reply)
    if placed:
        return Answer("placed", placed.group(1))
    if reply.startswith("We could not place your order"):
        return Answer("rejected")
    if re.match(r"Order ORD-\d+ is cancelled\.", reply):
        return Answer("cancelled")
    if "already cancelled" in reply or "can no longer be cancelled" in reply:
        return Answer("cannot_cancel")
    return Answer(f"unexpected reply: {reply}")


async def stored_state(engine: AsyncEngine) -> State:
    """The books as the database holds them, in the model's terms."""
    async with engine.connect() as connection:
        statuses = {
            order_number(row.id): row.status
            for row in await connection.execute(select(orders.c.id, orders.c.status))
        }
        stock = {
            row.sku: row.stock
            for row in await connection.execute(select(products.c.sku, products.c.stock))
        }
        order_net = {
            order_number(row.order_id): int(row.net)
            for row in await connection.execute(
                select(ledger_entries.c.order_id, func.sum(ledger_entries.c.amount).label("net"))
                .where(ledger_entries.c.order_id.is_not(None))
                .group_by(ledger_entries.c.order_id)
            )
        }
        by_payment: dict[str, dict[tuple[str, str], int]] = {
            EntryType.PAYMENT_CREDIT.value: {},
            EntryType.REFUND_REVERSAL.value: {},
        }
        for row in await connection.execute(
            select(
                ledger_entries.c.entry_type,
                ledger_entries.c.source,
                ledger_entries.c.payment_ref,
                func.sum(ledger_entries.c.amount).label("amount"),
            )
            .where(ledger_entries.c.entry_type.in_(list(by_payment)))
            .group_by(
                ledger_entries.c.entry_type, ledger_entries.c.source, ledger_entries.c.payment_ref
            )
        ):
            by_payment[row.entry_type][(row.source, row.payment_ref)] = abs(int(row.amount))
        return State(
            statuses,
            stock,
            order_net,
            by_payment[EntryType.PAYMENT_CREDIT.value],
            by_payment[EntryType.REFUND_REVERSAL.value],
        )


async def audit_problems(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return await reports.audit(connection)


async def reset(engine: AsyncEngine, database_url: str) -> None:
    """Empty every table and seed the demo catalogue again: a fresh database, quickly.

    Copying the template database for each example would take longer than the example.
    """
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
            await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(metadata.sorted_tables):
                await connection.execute(table.delete())
    await seed_demo(database_url)


# --- The machine ------------------------------------------------------------------------------

QUANTITIES = st.one_of(st.integers(1, 4), st.integers(100, 250))  # big ones empty the shelf
LINES = st.lists(
    st.tuples(st.sampled_from(SKUS), QUANTITIES),
    min_size=1,
    max_size=2,
    unique_by=lambda line: line[0],
).map(tuple)
PROVIDERS = st.sampled_from(["stripe", "razorpay"])


class BooksMachine(RuleBasedStateMachine):
    """One example: an app on a freshly emptied database, its own event loop, and the model."""

    def __init__(self, app_factory: Callable[..., FastAPI], database_url: str, racing: bool):
        super().__init__()
        self.racing = racing
        self.loop = asyncio.new_event_loop()
        self.app = app_factory(
            stripe_webhook_secret=STRIPE_SECRET,
            razorpay_webhook_secret=RAZORPAY_SECRET,
            rate_limit_per_sender="1000000/minute",
            rate_limit_per_ip="1000000/minute",
        )
        transport = httpx.ASGITransport(
            app=self.app, client=("127.0.0.1", 4321), raise_app_exceptions=False
        )
        self.http = httpx.AsyncClient(transport=transport, base_url="https://testserver")
        self.inspector = open_database(database_url)
        self.run(reset(self.inspector, database_url))
        self.books = Books()
        self.sent: list[Delivery] = []

    def run(self, step: Any) -> Any:
        return self.loop.run_until_complete(step)

    def teardown(self) -> None:
        self.run(self.http.aclose())
        self.run(self.app.state.runtime.close())
        self.run(self.inspector.dispose())
        self.loop.close()

    # Sending: one at a time, or several at once.

    async def post(self, delivery: Delivery) -> Observed:
        response = await self.http.post(
            delivery.path, content=delivery.body, headers=delivery.headers()
        )
        return observe(delivery, response)

    def send(self, delivery: Delivery) -> None:
        observed = self.run(self.post(delivery))
        self.sent.append(delivery)
        problems = self.books.deliver(delivery.key, delivery.effect, observed)
        assert not problems, problems

    def send_together(self, deliveries: Sequence[Delivery]) -> None:
        """Send at once; some order of them must explain every answer and the books after."""

        async def all_at_once() -> list[Observed]:
            return list(await asyncio.gather(*(self.post(each) for each in deliveries)))

        observed = self.run(all_at_once())
        self.sent.extend(deliveries)
        stored = self.run(stored_state(self.inspector))
        tried: list[str] = []
        for order in itertools.permutations(range(len(deliveries))):
            books = self.books.copy()
            problems = [
                problem
                for index in order
                for problem in books.deliver(
                    deliveries[index].key, deliveries[index].effect, observed[index]
                )
            ]
            if not problems and books.state() == stored:
                self.books = books
                return
            tried.append(f"{order}: {problems or books.state()}")
        raise AssertionError(
            "no order of the concurrent requests explains what happened:\n"
            + "\n".join(
                f"{delivery.effect} -> {seen}"
                for delivery, seen in zip(deliveries, observed, strict=True)
            )
            + f"\nstored: {stored}\n"
            + "\n".join(tried)
        )

    # What can happen next, drawn from what the model holds now.

    def orders(self) -> list[str]:
        return sorted(self.books.orders)

    def payments(
        self, *, provider: str | None = None, credited: bool | None = None
    ) -> list[Payment]:
        # In the order they came: sorted by their random ids, a replayed example would differ.
        return [
            payment
            for payment in self.books.payments.values()
            if (provider is None or payment.provider == provider)
            and (credited is None or bool(payment.credited) == credited)
        ]

    def pay_delivery(self, data: st.DataObject, number: str) -> Delivery:
        """A new payment of the order: mostly right, sometimes off by some paise."""
        provider = data.draw(PROVIDERS)
        total = self.books.orders[number].total
        amount = data.draw(st.sampled_from([total, total, total, total + 1, total - 100]))
        return capture(provider, new_payment_id(provider), number, amount, again=False)

    def refund_delivery(self, data: st.DataObject, payment: Payment) -> Delivery:
        """All that is left of the payment back, or a part: Razorpay by a new refund id, Stripe
        by the refunded total."""
        if payment.provider == "razorpay":
            left = max(payment.amount - payment.refunded, 1)
            amount = data.draw(st.one_of(st.just(left), st.integers(1, left)), label="refund")
            return razorpay_refund(
                payment.payment_id, payment.number, "rfnd_" + secrets.token_hex(7), amount
            )
        # Any total up to the payment: one at or below what was refunded is a late arrival.
        total = data.draw(
            st.one_of(st.just(payment.amount), st.integers(1, payment.amount)),
            label="refunded total",
        )
        return stripe_refund(payment.payment_id, payment.number, total)

    def any_delivery(self, data: st.DataObject, number: str) -> Delivery:
        """Something about this order: for the requests that race each other."""
        mine = [payment for payment in self.payments() if payment.number == number]
        earlier = [sent for sent in self.sent if getattr(sent.effect, "number", None) == number]
        kinds = (
            ["pay", "cancel", "place"]
            + ["refund", "capture"] * bool(mine)
            + ["again"] * bool(earlier)
        )
        kind = data.draw(st.sampled_from(kinds), label="racing")
        if kind == "pay":
            return self.pay_delivery(data, number)
        if kind == "cancel":
            return cancel(number)
        if kind == "place":
            return place(data.draw(LINES))
        if kind == "refund":
            return self.refund_delivery(data, data.draw(st.sampled_from(mine)))
        if kind == "capture":
            payment = data.draw(st.sampled_from(mine))
            return capture(payment.provider, payment.payment_id, number, payment.amount, again=True)
        return data.draw(st.sampled_from(earlier))

    # The rules.

    @rule(lines=LINES)
    def place_order(self, lines: tuple[tuple[str, int], ...]) -> None:
        self.send(place(lines))

    @precondition(lambda self: self.books.orders)
    @rule(data=st.data())
    def cancel_order(self, data: st.DataObject) -> None:
        self.send(cancel(data.draw(st.sampled_from(self.orders()))))

    @precondition(lambda self: self.books.orders)
    @rule(data=st.data())
    def pay_order(self, data: st.DataObject) -> None:
        self.send(self.pay_delivery(data, data.draw(st.sampled_from(self.orders()))))

    @precondition(lambda self: self.books.orders)
    @rule(data=st.data(), first=PROVIDERS, second=PROVIDERS)
    def paid_twice(self, data: st.DataObject, first: str, second: str) -> None:
        """A customer pays one order twice: both are credited, and refunds must reach both."""
        number = data.draw(st.sampled_from(self.orders()))
        total = self.books.orders[number].total
        for provider in (first, second):
            self.send(capture(provider, new_payment_id(provider), number, total, again=False))

    @precondition(lambda self: self.books.orders)
    @rule(data=st.data(), provider=PROVIDERS)
    def payment_fails_first(self, data: st.DataObject, provider: str) -> None:
        """A failed attempt: nothing moves, and its capture may still come (capture_pending)."""
        number = data.draw(st.sampled_from(self.orders()))
        total = self.books.orders[number].total
        self.send(payment_failed(provider, new_payment_id(provider), number, total))

    @precondition(lambda self: self.payments(credited=False))
    @rule(data=st.data())
    def capture_pending(self, data: st.DataObject) -> None:
        """The capture of a payment that failed first, or was refunded before it came."""
        payment = data.draw(st.sampled_from(self.payments(credited=False)))
        self.send(
            capture(
                payment.provider, payment.payment_id, payment.number, payment.amount, again=False
            )
        )

    @precondition(lambda self: self.payments(credited=True))
    @rule(data=st.data())
    def capture_announced_again(self, data: st.DataObject) -> None:
        """Another event about a captured payment (Razorpay's order.paid, a new Stripe id)."""
        payment = data.draw(st.sampled_from(self.payments(credited=True)))
        self.send(
            capture(
                payment.provider, payment.payment_id, payment.number, payment.amount, again=True
            )
        )

    @precondition(lambda self: self.payments(credited=True))
    @rule(data=st.data())
    def refund_part(self, data: st.DataObject) -> None:
        payment = data.draw(st.sampled_from(self.payments(credited=True)))
        self.send(self.refund_delivery(data, payment))

    @precondition(lambda self: self.books.orders)
    @rule(data=st.data(), provider=PROVIDERS)
    def refund_before_payment(self, data: st.DataObject, provider: str) -> None:
        number = data.draw(st.sampled_from(self.orders()))
        total = self.books.orders[number].total
        payment = Payment(provider, new_payment_id(provider), number, total)
        self.send(self.refund_delivery(data, payment))

    @precondition(lambda self: self.payments(provider="stripe", credited=True))
    @rule(data=st.data())
    def stripe_total_arrives_late(self, data: st.DataObject) -> None:
        """A higher refunded total, then the lower one Stripe sent before it."""
        payment = data.draw(st.sampled_from(self.payments(provider="stripe", credited=True)))
        low = data.draw(st.integers(1, payment.amount - 1))
        high = data.draw(st.integers(low + 1, payment.amount))
        early = stripe_refund(payment.payment_id, payment.number, low)
        self.send(stripe_refund(payment.payment_id, payment.number, high))
        self.send(early)

    @precondition(lambda self: self.payments(provider="razorpay", credited=True))
    @rule(data=st.data())
    def razorpay_refund_created_then_failed(self, data: st.DataObject) -> None:
        payment = data.draw(st.sampled_from(self.payments(provider="razorpay", credited=True)))
        refund_id = "rfnd_" + secrets.token_hex(7)
        amount = data.draw(st.integers(1, payment.amount))
        for state in ("created", "failed"):
            self.send(razorpay_refund(payment.payment_id, payment.number, refund_id, amount, state))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """Any earlier request again, byte for byte: the first answer, and nothing moves."""
        self.send(data.draw(st.sampled_from(self.sent)))

    @precondition(lambda self: self.racing and self.books.orders)
    @rule(data=st.data())
    def race(self, data: st.DataObject) -> None:
        """Two to four requests about one order at once; sometimes one of them twice."""
        number = data.draw(st.sampled_from(self.orders()))
        count = data.draw(st.integers(2, 4))
        deliveries = [self.any_delivery(data, number) for _ in range(count)]
        if data.draw(st.booleans()):
            deliveries[-1] = deliveries[0]  # a provider's retry racing its first delivery
        self.send_together(deliveries)

    @invariant()
    def the_books_are_the_models(self) -> None:
        assert self.run(stored_state(self.inspector)) == self.books.state()

    @invariant()
    def the_audit_finds_nothing(self) -> None:
        assert self.run(audit_problems(self.inspector)) == []


def test_the_books_always_say_what_the_model_says(
    app_factory: Callable[..., FastAPI], database_url: str
) -> None:
    racing = database_url.startswith("postgresql")  # SQLite's writers take turns anyway

    class OnThisDatabase(BooksMachine):
        def __init__(self) -> None:
            super().__init__(app_factory, database_url, racing)

    run_state_machine_as_test(
        OnThisDatabase,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None),
    )
