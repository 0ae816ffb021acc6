"""What a customer's message does, through the real signed webhook, on SQLite and PostgreSQL.

Bad input is always answered with HTTP 200 TwiML that says what is wrong, and changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    INBOUND_PATH,
    Snapshot,
    encode,
    inbound_form,
    reply_text,
    signed_headers,
    snapshot,
)
from whatsorder.db.tables import ledger_entries, retailers
from whatsorder.ordering.demo import DEMO_CATALOGUE
from whatsorder.ordering.replies import money

STOCK = {product.sku: product.stock for product in DEMO_CATALOGUE}
OTHER_RETAILER = "whatsapp:+919811122233"
TEN_KILOBYTES = "ORDER " + "2 x ATTA-5KG, " * 730


async def say(client: httpx.AsyncClient, body: str, **form: Any) -> str:
    """Post a correctly signed Twilio message; the text of the TwiML it was answered with."""
    pairs = inbound_form(body, **form)
    response = await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    return reply_text(response)  # parses the XML: it must be well-formed


async def place(client: httpx.AsyncClient, body: str, **form: Any) -> str:
    """Place an order and return its number."""
    reply = await say(client, body, **form)
    found = re.search(r"Order (ORD-\d{6}) placed", reply)
    assert found, reply
    return found[1]


def business(state: Snapshot) -> Snapshot:
    """The snapshot without what any message changes (its retailer and idempotency record)."""
    return replace(state, retailers=0, idempotency_records=0)


async def balance(db: AsyncEngine, whatsapp_id: str = "whatsapp:+919876543210") -> int:
    async with db.connect() as connection:
        total = await connection.scalar(
            select(func.coalesce(func.sum(ledger_entries.c.amount), 0))
            .select_from(ledger_entries.join(retailers))
            .where(retailers.c.whatsapp_id == whatsapp_id)
        )
    return int(total or 0)


@pytest.mark.parametrize(
    ("body", "explanation"),
    [
        ("ORDER 2 x ATTA-5GK", "ATTA-5GK is not in our catalogue"),
        ("ORDER 0 x ATTA-5KG", "ATTA-5KG: quantity must be between 1 and 1000"),
        ("ORDER -2 x ATTA-5KG", "ATTA-5KG: quantity must be between 1 and 1000"),
        ("ORDER 5 x ATTA-5KG, -3 x ATTA-5KG", "ATTA-5KG: quantity must be between 1 and 1000"),
        ("ORDER 99999999999999999999 x ATTA-5KG", "quantity for ATTA-5KG is far too large"),
        (f"ORDER {STOCK['ATTA-5KG'] + 1} x ATTA-5KG", f"only {STOCK['ATTA-5KG']} in stock"),
        (TEN_KILOBYTES, "Your message is too long"),
        ("", "We can only read text messages"),
        ("hello, is the shop open today?", "MENU: see the catalogue"),
        ("STATUS ORD-²", "is not an order number"),
        ("CANCEL my last order", "is not an order number"),
        ("ORDER 2 x ATTA-5KG, \x01\x02", 'could not read "??"'),
    ],
    ids=[
        "unknown-sku",
        "zero",
        "negative",
        "negative-line-taking-back",
        "huge-quantity",
        "out-of-stock",
        "ten-kilobytes",
        "empty-body-media",
        "chatter",
        "superscript-order-number",
        "words-for-an-order-number",
        "control-characters",
    ],
)
async def test_bad_input_is_answered_with_what_is_wrong_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncEngine, body: str, explanation: str
) -> None:
    before = await snapshot(db)
    reply = await say(client, body)
    assert explanation in reply
    after = await snapshot(db)
    assert business(after) == business(before)
    assert after.stock == STOCK


async def test_a_retailer_with_a_non_ascii_name_is_registered_and_gets_its_order(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    name = "श्री गणेश किराना 🛒"
    number = await place(client, "ORDER 2 x ATTA-5KG", name=name, sender=OTHER_RETAILER)
    async with db.connect() as connection:
        stored = await connection.scalar(
            select(retailers.c.name).where(retailers.c.whatsapp_id == OTHER_RETAILER)
        )
    assert stored == name
    assert number in await say(client, "STATUS", sender=OTHER_RETAILER)
    assert await balance(db, OTHER_RETAILER) == -2 * 26_500


async def test_a_profile_name_with_control_characters_is_registered_without_them(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await place(client, "ORDER 1 x SUGAR-1KG", name="Asha\x1b Rao\x07")
    async with db.connect() as connection:
        assert await connection.scalar(select(retailers.c.name)) == "Asha Rao"


async def test_menu_lists_every_demo_product_with_its_price_and_stock(
    client: httpx.AsyncClient,
) -> None:
    reply = await say(client, "menu")
    for product in DEMO_CATALOGUE:
        assert f"{product.sku}: {product.name}, {money(product.unit_price, 'INR')}" in reply
        assert f"({product.stock} in stock)" in reply
    assert "ATTA-5KG: Whole wheat atta, 5 kg, ₹265.00 (200 in stock)" in reply
    assert "SUGAR-1KG: Sugar, 1 kg, ₹48.00" in reply


async def test_an_order_names_its_number_lines_and_total(client: httpx.AsyncClient) -> None:
    reply = await say(client, "2x atta-5kg\n1 TOOR-1KG")
    assert "2 x ATTA-5KG Whole wheat atta, 5 kg = ₹530.00" in reply
    assert "1 x TOOR-1KG Toor dal, 1 kg = ₹160.00" in reply
    assert "Total: ₹690.00" in reply


async def test_status_without_a_number_names_the_latest_order(client: httpx.AsyncClient) -> None:
    assert "You have no orders yet" in await say(client, "STATUS")
    await place(client, "ORDER 1 x RICE-5KG")
    latest = await place(client, "ORDER 3 x SUGAR-1KG")
    reply = await say(client, "status")
    assert f"Order {latest} is placed" in reply
    assert "Total: ₹144.00" in reply


async def test_cancelling_an_own_order_restores_stock_and_reverses_the_debit_once(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place(client, "ORDER 4 x OIL-1L, 2 x ATTA-5KG")
    assert (await snapshot(db)).stock["OIL-1L"] == STOCK["OIL-1L"] - 4
    assert await balance(db) == -(4 * 15_500 + 2 * 26_500)

    reply = await say(client, f"cancel {number.lower()}")
    assert f"Order {number} is cancelled" in reply
    assert "₹1,150.00 has been reversed" in reply
    state = await snapshot(db)
    assert state.stock == STOCK
    assert state.ledger_entries == 2
    assert await balance(db) == 0
    assert f"Order {number} is cancelled" in await say(client, f"STATUS {number}")

    again = await say(client, f"CANCEL {number}")
    assert f"Order {number} was already cancelled" in again
    assert await snapshot(db) == replace(state, idempotency_records=state.idempotency_records + 2)
    assert await balance(db) == 0


async def test_another_retailers_order_cannot_be_found_or_cancelled(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    number = await place(client, "ORDER 5 x TOOR-1KG", sender=OTHER_RETAILER, name="Ravi")
    before = await snapshot(db)

    cancel = await say(client, f"CANCEL {number}")
    status = await say(client, f"STATUS {number}")

    assert cancel == f"We could not find order {number} on your account."
    assert status == cancel
    after = await snapshot(db)
    assert business(after) == business(before)
    assert after.stock["TOOR-1KG"] == STOCK["TOOR-1KG"] - 5


async def test_cancelling_an_order_that_does_not_exist_says_it_cannot_be_found(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await place(client, "ORDER 1 x ATTA-5KG")
    before = await snapshot(db)
    reply = await say(client, "CANCEL ORD-999999")
    assert reply == "We could not find order ORD-999999 on your account."
    assert business(await snapshot(db)) == business(before)
