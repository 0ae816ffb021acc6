"""The console's retailer page, in process: a customer's language, consent now and its ledger,
last message and orders, readable by a viewer, with the phone number masked."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    INBOUND_PATH,
    encode,
    inbound_form,
    new_sid,
    signed_headers,
)
from whatsorder.db.operators import add_operator
from whatsorder.operators import hash_password

PASSWORD = "correct horse battery"
SENDER = "whatsapp:+919876543210"


@pytest.fixture
async def console(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(console_secret="a console secret for tests, long enough")
    async with db.begin() as connection:
        await add_operator(connection, "vik", "viewer", hash_password(PASSWORD), datetime.now(UTC))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        yield http
    await app.state.runtime.close()


async def customer_says(http: httpx.AsyncClient, body: str, sid: str) -> None:
    pairs = inbound_form(body, sid=sid, sender=SENDER, name="Asha Stores")
    answer = await http.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    assert answer.status_code == 200, answer.text


async def test_a_viewer_reads_a_retailer_s_language_consent_and_ledger(
    console: httpx.AsyncClient,
) -> None:
    stop, start, again = new_sid(), new_sid(), new_sid()
    await customer_says(console, "भाषा हिंदी", new_sid())
    await customer_says(console, "ORDER 1 x ATTA-5KG", new_sid())
    await customer_says(console, "STOP", stop)
    await customer_says(console, "START", start)
    await customer_says(console, "STOP", again)
    signed = await console.post("/console/login", data={"name": "vik", "password": PASSWORD})
    assert signed.status_code == 303

    orders = await console.get("/console/orders")
    assert 'href="/console/retailers/1"' in orders.text  # linked from the orders list
    page = await console.get("/console/retailers/1")

    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "<h1>Asha Stores</h1>" in text
    assert "whatsapp:+********3210" in text
    assert "9876543210" not in text
    assert '<span lang="hi">हिंदी</span> (chosen by the customer)' in text
    assert "stopped</span> since" in text
    assert text.count("<td>twilio</td>") == 3  # the ledger: both STOPs and the START
    assert text.index(again) < text.index(start) < text.index(stop)  # newest first
    assert "1 order</a>" in text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


async def test_an_unknown_retailer_is_a_clear_404(console: httpx.AsyncClient) -> None:
    await console.post("/console/login", data={"name": "vik", "password": PASSWORD})
    page = await console.get("/console/retailers/999")
    assert page.status_code == 404
    assert "There is no retailer 999." in page.text


async def test_a_stranger_is_sent_to_sign_in(console: httpx.AsyncClient) -> None:
    page = await console.get("/console/retailers/1")
    assert page.status_code == 303
    assert page.headers["location"].endswith("/console/login")
