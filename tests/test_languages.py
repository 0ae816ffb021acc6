"""A customer's language through the front door: signed Twilio forms answered in TwiML and
signed Meta deliveries answered through the outbox, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    META_SENDER,
    META_VERIFY_TOKEN,
    app_client,
    encode,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_text_message,
    reply_text,
    signed_headers,
)
from whatsorder.db.tables import outbox_messages, retailers
from whatsorder.ordering import replies

TWILIO_SENDER = "whatsapp:+919876543210"


@pytest.fixture
async def client(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    """The app with Twilio's and Meta's secrets configured."""
    app = app_factory(meta_app_secret=META_APP_SECRET, meta_verify_token=META_VERIFY_TOKEN)
    async with app_client(app) as http:
        yield http


async def twilio_says(client: httpx.AsyncClient, body: str, **form: Any) -> str:
    """A signed Twilio message; the text of the TwiML reply."""
    pairs = inbound_form(body, **form)
    response = await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    assert response.status_code == 200, response.text
    return reply_text(response)


async def meta_says(client: httpx.AsyncClient, db: AsyncEngine, body: str) -> str:
    """A signed Meta delivery of one text message; the reply it put in the outbox."""
    message = meta_text_message(body)
    delivery = meta_delivery([message])
    response = await client.post(META_PATH, content=delivery, headers=meta_headers(delivery))
    assert response.status_code == 200, response.text
    async with db.connect() as connection:
        parts = await connection.scalars(
            select(outbox_messages.c.body)
            .where(outbox_messages.c.idempotency_key.like(f"reply:{message['id']}%"))
            .order_by(outbox_messages.c.id)
        )
        return "".join(parts)


async def language_of(db: AsyncEngine, whatsapp_id: str) -> str | None:
    async with db.connect() as connection:
        return await connection.scalar(
            select(retailers.c.language).where(retailers.c.whatsapp_id == whatsapp_id)
        )


async def test_a_hindi_speaking_customer_gets_hindi_replies_through_twilio(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    assert await twilio_says(client, "भाषा हिंदी") == replies.language_chosen("hi")
    assert await language_of(db, TWILIO_SENDER) == "hi"

    assert (await twilio_says(client, "MENU")).startswith("हमारी सूची:\n")
    placed = await twilio_says(client, "ORDER 2 x ATTA-5KG")
    assert placed.startswith("ऑर्डर ORD-000001 दर्ज हो गया:\n2 x ATTA-5KG")
    assert "\nकुल: ₹530.00\n" in placed
    assert (await twilio_says(client, "STATUS")).startswith("ऑर्डर ORD-000001 की स्थिति: दर्ज")
    assert await twilio_says(client, "HELP") == replies.said(replies.HELP, "hi")
    assert "स्टॉक में केवल" in await twilio_says(client, "ORDER 999 x ATTA-5KG")

    assert await twilio_says(client, "language en") == replies.language_chosen("en")
    assert (await twilio_says(client, "MENU")).startswith("Our catalogue:\n")
    assert await language_of(db, TWILIO_SENDER) == "en"


async def test_a_hindi_speaking_customer_gets_hindi_replies_through_meta(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    sender = f"whatsapp:+{META_SENDER}"
    assert await meta_says(client, db, "LANGUAGE HI") == replies.language_chosen("hi")
    assert await language_of(db, sender) == "hi"

    assert (await meta_says(client, db, "MENU")).startswith("हमारी सूची:\n")
    placed = await meta_says(client, db, "ORDER 1 x ATTA-5KG")
    assert placed.startswith("ऑर्डर ORD-000001 दर्ज हो गया:")
    assert (await meta_says(client, db, "STATUS ORD-000001")).startswith(
        "ऑर्डर ORD-000001 की स्थिति: दर्ज"
    )
    assert await meta_says(client, db, "HELP") == replies.said(replies.HELP, "hi")

    assert await meta_says(client, db, "भाषा English") == replies.language_chosen("en")
    assert await meta_says(client, db, "HELP") == replies.HELP


async def test_one_customer_keeps_one_language_whichever_provider_brings_the_message(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await meta_says(client, db, "LANGUAGE HI")
    # Twilio spells the same number as Meta's sender: the same retailer.
    reply = await twilio_says(client, "HELP", sender=f"whatsapp:+{META_SENDER}")
    assert reply == replies.said(replies.HELP, "hi")


async def test_an_unknown_language_gets_a_clear_reply_listing_the_choices(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    reply = await twilio_says(client, "LANGUAGE Klingon")
    assert reply == (
        'We have no replies in "Klingon". To choose a language, send one of: '
        "LANGUAGE EN (English), LANGUAGE HI (हिंदी)."
    )
    assert await language_of(db, TWILIO_SENDER) is None
    assert "LANGUAGE HI (हिंदी)" in await meta_says(client, db, "LANGUAGE")


async def test_a_customer_who_never_chose_reads_english_as_before(
    client: httpx.AsyncClient,
) -> None:
    assert await twilio_says(client, "HELP") == replies.HELP
    assert (await twilio_says(client, "ORDER 1 x ATTA-5KG")).startswith("Order ORD-000001 placed")


async def test_the_rate_limit_reply_is_in_the_customer_s_language(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> None:
    app = app_factory(rate_limit_per_sender="2/minute")
    async with app_client(app) as http:
        await twilio_says(http, "LANGUAGE HI")
        await twilio_says(http, "HELP")
        refused = await twilio_says(http, "MENU")
    assert refused == replies.said(replies.RATE_LIMITED, "hi")
    assert refused.startswith("आप इतनी जल्दी-जल्दी संदेश भेज रहे हैं")
