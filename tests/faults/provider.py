"""A webhook provider as the fault suite plays it: signed deliveries, retried until answered.

Like Twilio, Stripe and Razorpay, the ``Provider`` retries a delivery on a connection error, a
timeout, a 5xx or a 409, with a short backoff (shorter than the providers', to keep the suite
quick), bounded in attempts and in time. Anything else is its answer: a 200 acknowledges the
delivery. ``Shop`` is the traffic: customers who order over Twilio and then pay through Stripe
or Razorpay, so orders, payments and ledger entries all meet the faults.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from support import (
    INBOUND_PATH,
    RAZORPAY_PATH,
    STRIPE_PATH,
    encode,
    inbound_form,
    new_razorpay_event_id,
    new_sid,
    razorpay_event,
    razorpay_headers,
    reply_text,
    signed_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder.ordering.demo import DEMO_CATALOGUE

PRICES = {product.sku: product.unit_price for product in DEMO_CATALOGUE}
TWILIO_TIMEOUT = 15.0  # seconds Twilio waits for an answer before it gives up on a request


@dataclass(frozen=True)
class Delivery:
    """One webhook a provider must get acknowledged; signed afresh for each attempt."""

    provider: str  # twilio, stripe, razorpay
    key: str  # the idempotency key the service derives: MessageSid or event id
    path: str
    body: bytes
    sign: Callable[[], dict[str, str]]


def twilio_order(sku: str, quantity: int, sender: str) -> Delivery:
    sid = new_sid()
    pairs = inbound_form(f"ORDER {quantity} x {sku}", sid=sid, sender=sender)
    return Delivery(
        "twilio", sid, INBOUND_PATH, encode(pairs), lambda: signed_headers(INBOUND_PATH, pairs)
    )


def stripe_payment(order: str, amount: int) -> tuple[Delivery, str]:
    payment_id = "pi_" + secrets.token_hex(12)
    event = stripe_event(order, amount, payment_id=payment_id)
    body = stripe_body(event)
    return Delivery(
        "stripe", event["id"], STRIPE_PATH, body, lambda: stripe_headers(body)
    ), payment_id


def razorpay_payment(order: str, amount: int) -> tuple[Delivery, str]:
    payment_id = "pay_" + secrets.token_hex(7)
    event_id = new_razorpay_event_id()
    body = razorpay_event(order, amount, payment_id=payment_id)
    return (
        Delivery(
            "razorpay", event_id, RAZORPAY_PATH, body, lambda: razorpay_headers(body, event_id)
        ),
        payment_id,
    )


@dataclass
class Tally:
    """What the provider saw: every attempt's answer and how long it took."""

    attempts: int = 0
    deliveries: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "200", "503", "connection", …
    seconds: dict[str, list[float]] = field(default_factory=dict)
    unanswered: list[Delivery] = field(default_factory=list)  # gave up: attempts or time ran out
    refused: list[tuple[Delivery, int, str]] = field(default_factory=list)  # 4xx, not retried
    timeline: list[tuple[float, float, str]] = field(default_factory=list)  # sent, took, answer
    bodies: Counter[str] = field(default_factory=Counter)  # the problem types of non-200 answers

    @property
    def retries(self) -> int:
        return self.attempts - self.deliveries

    def note(self, answer: str, seconds: float) -> None:
        self.timeline.append((time.monotonic() - seconds, seconds, answer))
        self.attempts += 1
        self.answers[answer] += 1
        self.seconds.setdefault(answer, []).append(seconds)

    def slowest(self, answer: str) -> float:
        return max(self.seconds.get(answer, [0.0]))

    def percentile(self, answer: str, share: float) -> float:
        values = sorted(self.seconds.get(answer, [0.0]))
        return values[min(len(values) - 1, int(share * len(values)))]


def _is_problem(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/problem+json")


def retryable(status: int) -> bool:
    return status >= 500 or status == 409


class Provider:
    """Delivers webhooks to one server, retrying like a provider (bounded)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_attempts: int = 40,
        give_up_after: float = 120.0,
        timeout: float = TWILIO_TIMEOUT,
        backoff: tuple[float, float] = (0.05, 1.0),
        connections: int = 100,
    ) -> None:
        self.tally = Tally()
        self.max_attempts = max_attempts
        self.give_up_after = give_up_after
        self.backoff = backoff
        # A new connection per attempt, as providers open them: a dead worker's kept-alive
        # socket would otherwise fail the next request for no reason of the service's.
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=0)
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.client.aclose()

    async def attempt(self, delivery: Delivery) -> httpx.Response | str:
        """One attempt: the response, or the name of the transport failure."""
        started = time.monotonic()
        try:
            response = await self.client.post(
                delivery.path, content=delivery.body, headers=delivery.sign()
            )
        except httpx.TimeoutException:
            self.tally.note("timeout", time.monotonic() - started)
            return "timeout"
        except httpx.TransportError:
            self.tally.note("connection", time.monotonic() - started)
            return "connection"
        self.tally.note(str(response.status_code), time.monotonic() - started)
        if response.status_code != 200:
            kind = response.json().get("type", "?") if _is_problem(response) else response.text[:80]
            self.tally.bodies[f"{response.status_code} {kind}"] += 1
        return response

    async def deliver(self, delivery: Delivery) -> httpx.Response | None:
        """Until acknowledged (the 200), refused (another 4xx), or out of attempts or time."""
        self.tally.deliveries += 1
        deadline = time.monotonic() + self.give_up_after
        pause, longest = self.backoff
        for _ in range(self.max_attempts):
            answer = await self.attempt(delivery)
            if isinstance(answer, httpx.Response):
                if answer.status_code == 200:
                    return answer
                if not retryable(answer.status_code):
                    self.tally.refused.append((delivery, answer.status_code, answer.text[:300]))
                    return None
            if time.monotonic() + pause > deadline:
                break
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, longest)
        self.tally.unanswered.append(delivery)
        return None


@dataclass
class Expected:
    """What the books must show: the deliveries the provider saw acknowledged."""

    orders: dict[str, tuple[str, int]] = field(default_factory=dict)  # sid → (sku, quantity)
    order_numbers: dict[str, str] = field(default_factory=dict)  # sid → ORD-…
    payments: dict[str, tuple[str, str, int, str]] = field(default_factory=dict)
    # event id → (provider, order number, amount, payment id)
    unacknowledged: set[str] = field(default_factory=set)  # keys never acknowledged
    wrong_replies: list[str] = field(default_factory=list)


ORDER_PLACED = re.compile(r"Order (ORD-\d+) placed")


class Shop:
    """Customers who each order once over Twilio and pay for it through Stripe or Razorpay."""

    def __init__(self, provider: Provider, *, pay: bool = True) -> None:
        self.provider = provider
        self.pay = pay
        self.expected = Expected()
        self.customers = 0

    async def customer(self, index: int) -> None:
        sku = random.choice(sorted(PRICES))
        quantity = random.randint(1, 3)
        order = twilio_order(sku, quantity, sender=f"whatsapp:+9199{index:08d}")
        response = await self.provider.deliver(order)
        if response is None:
            self.expected.unacknowledged.add(order.key)
            return
        placed = ORDER_PLACED.search(reply_text(response))
        if placed is None:
            self.expected.wrong_replies.append(f"{order.key}: {reply_text(response)!r}")
            return
        number = placed.group(1)
        self.expected.orders[order.key] = (sku, quantity)
        self.expected.order_numbers[order.key] = number
        if not self.pay:
            return
        amount = PRICES[sku] * quantity
        pay = stripe_payment if index % 2 else razorpay_payment
        payment, payment_id = pay(number, amount)
        answer = await self.provider.deliver(payment)
        if answer is None:
            self.expected.unacknowledged.add(payment.key)
            return
        if answer.json().get("result") not in {"credited", "already_credited"}:
            self.expected.wrong_replies.append(f"{payment.key}: {answer.text}")
            return
        self.expected.payments[payment.key] = (payment.provider, number, amount, payment_id)

    async def run(
        self,
        *,
        customers: int,
        concurrency: int,
        seconds: float,
        enough: Callable[[], bool] = lambda: False,
    ) -> None:
        """Up to ``customers`` customers, ``concurrency`` at a time, until ``enough()`` says so
        or ``seconds`` pass; customers already started always finish."""
        deadline = time.monotonic() + seconds
        gate = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()
        for index in range(customers):
            await gate.acquire()
            if enough() or time.monotonic() > deadline:
                gate.release()
                break
            self.customers += 1
            task = asyncio.create_task(self.customer(index))
            running.add(task)
            task.add_done_callback(lambda done: (running.discard(done), gate.release()))
        if running:
            await asyncio.gather(*running)
