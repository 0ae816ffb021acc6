"""``PAY ORD-…`` as customers send it: signed Twilio messages through the front door, the link
made by the provider's SDK against a fake API on 127.0.0.1, or by the development provider
that ``make run`` uses (issue #17)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import serving
from fake_payment_apis import STRIPE_KEY, FakePaymentApis
from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    META_VERIFY_TOKEN,
    PUBLIC_URL,
    app_client,
    encode,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_text_message,
    reply_text,
    signed_headers,
)
from whatsorder.db.tables import outbox_messages


@pytest.fixture
def fake() -> Iterator[tuple[FakePaymentApis, str]]:
    apis = FakePaymentApis()
    with serving(apis.app) as base:
        yield apis, base


@pytest.fixture
def client_with(
    app_factory: Callable[..., FastAPI],
) -> Callable[..., Any]:
    def build(**settings: Any) -> Any:
        return app_client(app_factory(**settings))

    return build


async def _say(http: httpx.AsyncClient, text: str, sid: str | None = None) -> str:
    pairs = inbound_form(text, sid=sid)
    answer = await http.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    assert answer.status_code == 200, answer.text
    return reply_text(answer)


async def _ordered(http: httpx.AsyncClient) -> str:
    reply = await _say(http, "ORDER 2 x ATTA-5KG")
    number = reply.split()[1]
    assert number.startswith("ORD-"), reply
    return number


@pytest.fixture
async def stripe_client(
    client_with: Callable[..., Any], fake: tuple[FakePaymentApis, str]
) -> AsyncIterator[httpx.AsyncClient]:
    _apis, base = fake
    settings = {
        "payment_link_provider": "stripe",
        "stripe_api_key": STRIPE_KEY,
        "stripe_api_url": base,
    }
    async with client_with(**settings) as http:
        yield http


async def test_pay_answers_the_checkout_link_and_every_repeat_the_same_one(
    stripe_client: httpx.AsyncClient, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, _base = fake
    number = await _ordered(stripe_client)
    first = await _say(stripe_client, f"PAY {number}", sid="SM" + "a" * 32)
    (link,) = apis.links("stripe")
    assert link["url"] in first
    assert "₹530.00" in first
    replayed = await _say(stripe_client, f"PAY {number}", sid="SM" + "a" * 32)  # Twilio's retry
    again = await _say(stripe_client, f"pay {number.lower()}")  # a second PAY, later
    assert replayed == first
    assert again == first
    both = await asyncio.gather(
        _say(stripe_client, f"PAY {number}"), _say(stripe_client, f"PAY {number}")
    )
    assert set(both) == {first}
    assert len(apis.links("stripe")) == 1


async def test_pay_for_what_cannot_be_paid_creates_nothing(
    stripe_client: httpx.AsyncClient, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, _base = fake
    number = await _ordered(stripe_client)
    assert "Say which order to pay" in await _say(stripe_client, "PAY")
    assert "is not an order number" in await _say(stripe_client, "PAY tomorrow")
    assert "could not find order ORD-000999" in await _say(stripe_client, "PAY ORD-000999")
    await _say(stripe_client, f"CANCEL {number}")
    assert "is cancelled: there is nothing to pay" in await _say(stripe_client, f"PAY {number}")
    assert apis.requests == []


async def test_a_hindi_speaking_customer_is_answered_in_hindi(
    stripe_client: httpx.AsyncClient,
) -> None:
    number = await _ordered(stripe_client)
    await _say(stripe_client, "LANGUAGE HI")
    reply = await _say(stripe_client, f"PAY {number}")
    assert "के लिए" in reply
    assert "https://checkout.stripe.test/" in reply


async def test_without_a_link_provider_pay_says_so(client_with: Callable[..., Any]) -> None:
    async with client_with() as http:
        number = await _ordered(http)
        assert "Paying by link is not set up" in await _say(http, f"PAY {number}")


async def test_development_links_open_a_page_that_says_how_to_pay(
    client_with: Callable[..., Any],
) -> None:
    async with client_with(payment_link_provider="development") as http:
        number = await _ordered(http)
        reply = await _say(http, f"PAY {number}")
        url = next(word for word in reply.split() if word.startswith("https://"))
        assert url.endswith(f"/dev/pay/{number}-53000-INR")
        page = await http.get(url.removeprefix(PUBLIC_URL))
        assert page.status_code == 200
        assert f"whatsorder pay {number}" in page.text
        assert "₹530.00" in page.text
        missing = await http.get("/dev/pay/<script>")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


async def test_the_development_page_is_not_served_unless_chosen(
    client_with: Callable[..., Any],
) -> None:
    async with client_with() as http:
        assert (await http.get("/dev/pay/ORD-000001-53000-INR")).status_code == 404
        paid = await http.get("/paid")  # where Stripe Checkout sends a customer who paid
        assert paid.status_code == 200
        assert "We confirm it on WhatsApp" in paid.text


async def test_a_meta_customer_gets_the_link_through_the_outbox(
    client_with: Callable[..., Any], db: AsyncEngine
) -> None:
    async with client_with(
        payment_link_provider="development",
        meta_app_secret=META_APP_SECRET,
        meta_verify_token=META_VERIFY_TOKEN,
    ) as http:
        for text in ("ORDER 2 x ATTA-5KG", "PAY ORD-000001"):
            body = meta_delivery([meta_text_message(text)])
            answer = await http.post(META_PATH, content=body, headers=meta_headers(body))
            assert answer.status_code == 200, answer.text
    async with db.connect() as connection:
        bodies = (
            await connection.scalars(select(outbox_messages.c.body).order_by(outbox_messages.c.id))
        ).all()
    assert len(bodies) == 2
    assert "/dev/pay/ORD-000001-53000-INR" in bodies[1]


async def test_a_slow_provider_holds_up_no_other_customer(
    client_with: Callable[..., Any], fake: tuple[FakePaymentApis, str], database_url: str
) -> None:
    """Stripe answers only after 4 s. The link is made inside the PAY message's transaction,
    which on SQLite holds the one writer's lock: there the call is cut at 3 s ("try again in a
    minute"), inside other webhooks' wait for the lock; PostgreSQL locks only the message's
    own key and waits for Stripe. Either way another customer's order placed meanwhile goes
    through, and a later PAY gets the one link Stripe made."""
    apis, base = fake
    apis.delay = 4.0
    settings = {
        "payment_link_provider": "stripe",
        "stripe_api_key": STRIPE_KEY,
        "stripe_api_url": base,
    }
    async with client_with(**settings) as http:
        number = await _ordered(http)
        other = inbound_form("ORDER 1 x ATTA-5KG", sender="whatsapp:+919811111111")

        async def other_customer_orders() -> httpx.Response:
            await asyncio.sleep(0.5)  # while the PAY waits for Stripe
            return await http.post(
                INBOUND_PATH, content=encode(other), headers=signed_headers(INBOUND_PATH, other)
            )

        paid, ordered = await asyncio.gather(_say(http, f"PAY {number}"), other_customer_orders())
        assert ordered.status_code == 200
        assert "placed" in reply_text(ordered)
        if database_url.startswith("sqlite"):
            assert "again in a minute" in paid
            await asyncio.sleep(1.5)  # Stripe finishes the session it was making
            apis.delay = 0.0
            paid = await _say(http, f"PAY {number}")
        (link,) = apis.links("stripe")
        assert link["url"] in paid
