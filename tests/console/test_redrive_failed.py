"""A signed delivery whose processing failed with an error of ours is kept, once, and re-driven
from the console after the cause is fixed, through the webhook's own key: one order however
the provider's own retries and the re-drive interleave. In process, on both databases.

The failure is real: the database refuses new orders (a trigger), as a bug of ours would make
the handler fail after the signature held. Dropping the trigger is the fix.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from support import INBOUND_PATH, encode, inbound_form, signed_headers
from whatsorder.db.operators import add_operator
from whatsorder.db.tables import dead_letters, orders
from whatsorder.operators import hash_password

PASSWORD = "correct horse battery"
# What Twilio adds (its idempotency token) and what a proxy in front may add (a credential).
PROXY_AND_TOKEN = {"I-Twilio-Idempotency-Token": "9f3c1a7e-token", "X-Api-Key": "proxy-cred-1"}
SENDER = "whatsapp:+919876543210"
DIGITS = "9876543210"  # the full number, never on a page or in the shown record
REFUSE = {
    "sqlite": [
        "CREATE TRIGGER refuse_orders BEFORE INSERT ON orders"
        " BEGIN SELECT RAISE(ABORT, 'new orders are refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_orders() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'new orders are refused'; END $$",
        "CREATE TRIGGER refuse_orders BEFORE INSERT ON orders"
        " FOR EACH ROW EXECUTE FUNCTION refuse_orders()",
    ],
}


@pytest.fixture
async def app(app_factory: Callable[..., FastAPI], db: AsyncEngine) -> AsyncIterator[FastAPI]:
    application = app_factory(console_secret="a console secret for tests, long enough")
    async with db.begin() as connection:
        for name in ("asha", "bo"):
            await add_operator(connection, name, "operator", hash_password(PASSWORD), _now())
    yield application
    await application.state.runtime.close()


def _now() -> datetime:
    return datetime.now(UTC)


def client_of(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


async def refuse_orders(db: AsyncEngine, refused: bool) -> None:
    async with db.begin() as connection:
        if refused:
            for statement in REFUSE[db.dialect.name]:
                await connection.execute(text(statement))
        else:
            on = " ON orders" if db.dialect.name == "postgresql" else ""
            await connection.execute(text(f"DROP TRIGGER refuse_orders{on}"))


async def send(
    http: httpx.AsyncClient, form: list[tuple[str, str]], **extra: str
) -> httpx.Response:
    """Twilio's request, signed; sent again byte for byte, it is Twilio's retry (or fallback)."""
    headers = {**signed_headers(INBOUND_PATH, form), **extra}
    return await http.post(INBOUND_PATH, content=encode(form), headers=headers)


async def kept(db: AsyncEngine) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        rows = await connection.execute(select(dead_letters).order_by(dead_letters.c.id))
        return [dict(row) for row in rows.mappings()]


async def order_count(db: AsyncEngine) -> int:
    async with db.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(orders)) or 0)


async def press(app: FastAPI, name: str, letter_id: int) -> httpx.Response:
    """An operator signs in and presses Re-drive on the dead letters page."""
    async with client_of(app) as http:
        answer = await http.post("/console/login", data={"name": name, "password": PASSWORD})
        assert answer.status_code == 303, answer.text
        page = await http.get("/console/dead-letters")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, "the page has no CSRF token"
        return await http.post(
            f"/console/dead-letters/{letter_id}/redrive", data={"csrf_token": token.group(1)}
        )


async def failed_message(
    app: FastAPI, db: AsyncEngine, *, refused: bool = False, copies: int = 2
) -> list[tuple[str, str]]:
    """A Twilio ORDER whose processing failed twice (the first delivery and Twilio's fallback),
    sent through a proxy that adds a credential of its own."""
    form = inbound_form("ORDER 2 x ATTA-5KG", sender=SENDER)
    if not refused:
        await refuse_orders(db, True)
    async with client_of(app) as http:
        for _ in range(copies):
            answer = await send(http, form, **PROXY_AND_TOKEN)
            assert answer.status_code == 500, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
    return form


async def test_a_twilio_message_that_failed_is_kept_once_without_its_signature_or_full_phone(
    app: FastAPI, db: AsyncEngine
) -> None:
    form = await failed_message(app, db)
    rows = await kept(db)
    assert len(rows) == 1, "the fallback's copy added a second dead letter"
    row = rows[0]
    assert row["provider"] == "twilio"
    assert row["delivery_key"] == f"twilio_inbound:{dict(form)['MessageSid']}"
    assert "unexpected error" in row["reason"]
    assert DIGITS not in row["body"], "the shown record is masked"
    assert row["payload"] is not None
    assert "x-twilio-signature" not in row["payload"].lower()
    assert "proxy-cred-1" not in row["payload"], "only the headers processing reads are kept"
    assert "9f3c1a7e-token" in row["payload"]
    assert await order_count(db) == 0
    async with client_of(app) as http:
        await http.post("/console/login", data={"name": "asha", "password": PASSWORD})
        page = await http.get("/console/dead-letters")
    assert "twilio" in page.text
    assert DIGITS not in page.text


async def test_once_fixed_a_redrive_places_the_order_and_twilios_retry_then_replays(
    app: FastAPI, db: AsyncEngine
) -> None:
    form = await failed_message(app, db)
    [row] = await kept(db)
    await refuse_orders(db, False)  # the fix

    answer = await press(app, "asha", row["id"])
    assert answer.status_code == 200, answer.text
    [after] = await kept(db)
    assert after["redrive_state"] == "done"
    assert re.fullmatch(
        r"order ORD-\d+ created; the customer was sent no reply: tell them", after["redrive_result"]
    ), after
    assert after["payload"] is None
    assert await order_count(db) == 1

    async with client_of(app) as http:
        retry = await send(http, form, **PROXY_AND_TOKEN)
    assert retry.status_code == 200
    assert retry.headers.get("idempotent-replayed") == "true"
    assert await order_count(db) == 1
    assert len(await kept(db)) == 1


async def test_a_redrive_after_twilios_own_retry_succeeded_replays_and_places_nothing(
    app: FastAPI, db: AsyncEngine
) -> None:
    form = await failed_message(app, db)
    [row] = await kept(db)
    await refuse_orders(db, False)
    async with client_of(app) as http:
        answer = await send(http, form, **PROXY_AND_TOKEN)  # processed by Twilio's retry
        assert answer.status_code == 200
    assert await order_count(db) == 1

    assert (await press(app, "asha", row["id"])).status_code == 200
    [after] = await kept(db)
    assert after["redrive_state"] == "done"
    assert after["redrive_result"].startswith("already processed: replayed"), after
    assert await order_count(db) == 1


async def test_two_operators_redriving_at_once_place_one_order(
    app: FastAPI, db: AsyncEngine
) -> None:
    await failed_message(app, db)
    [row] = await kept(db)
    await refuse_orders(db, False)
    answers = await asyncio.gather(press(app, "asha", row["id"]), press(app, "bo", row["id"]))
    assert sorted(answer.status_code for answer in answers) == [200, 409]
    assert await order_count(db) == 1


async def test_a_redrive_before_the_fix_fails_again_and_stays_redrivable(
    app: FastAPI, db: AsyncEngine
) -> None:
    await failed_message(app, db)
    [row] = await kept(db)
    await press(app, "asha", row["id"])
    [after] = await kept(db)
    assert after["redrive_state"] == "failed"
    assert after["redrive_result"].startswith("failed again"), after
    assert after["payload"] is not None
    assert len(await kept(db)) == 1, "a failed re-drive keeps no second dead letter"

    await refuse_orders(db, False)
    assert (await press(app, "bo", row["id"])).status_code == 200
    assert await order_count(db) == 1


async def test_redriving_a_busy_senders_messages_is_not_refused_by_the_sender_limit(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> None:
    """Each message was counted against its sender when it came; a re-drive that counted it
    again would be answered "rate limited", marked done, and the order lost."""
    app = app_factory(
        console_secret="a console secret for tests, long enough", rate_limit_per_sender="2/minute"
    )
    async with db.begin() as connection:
        await add_operator(connection, "asha", "operator", hash_password(PASSWORD), _now())
    try:
        await failed_message(app, db, copies=1)
        await failed_message(app, db, refused=True, copies=1)  # the sender's limit is used up
        rows = await kept(db)
        assert len(rows) == 2
        await refuse_orders(db, False)
        for row in rows:
            assert (await press(app, "asha", row["id"])).status_code == 200
        assert [row["redrive_state"] for row in await kept(db)] == ["done", "done"]
        assert await order_count(db) == 2
    finally:
        await app.state.runtime.close()
