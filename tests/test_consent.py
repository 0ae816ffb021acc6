"""Consent from the customer through the front door, on SQLite and PostgreSQL: STOP and START
from Twilio and Meta messages, Meta's user_preferences field, and the customer's last message
(the 24-hour window) — each recorded once, the newest winning."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    META_SENDER,
    META_VERIFY_TOKEN,
    app_client,
    encode,
    fixture_text,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_text_message,
    new_sid,
    reply_text,
    signed_headers,
)
from whatsorder.clock import as_utc, utcnow
from whatsorder.db.tables import consent_events, dead_letters, retailers, webhook_idempotency
from whatsorder.ordering import replies

TWILIO_SENDER = "whatsapp:+919876543210"
META_RETAILER = f"whatsapp:+{META_SENDER}"
PREFERENCE_RETAILER = "whatsapp:+16505551234"  # the user_preferences fixture's wa_id


@pytest.fixture
async def client(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(meta_app_secret=META_APP_SECRET, meta_verify_token=META_VERIFY_TOKEN)
    async with app_client(app) as http:
        yield http


async def twilio_says(client: httpx.AsyncClient, body: str, sid: str | None = None) -> str:
    pairs = inbound_form(body, sid=sid)
    response = await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    assert response.status_code == 200, response.text
    return reply_text(response)


async def deliver(client: httpx.AsyncClient, body: bytes) -> dict[str, Any]:
    response = await client.post(META_PATH, content=body, headers=meta_headers(body))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def meta_text_at(text: str, sent_at: datetime, wamid: str | None = None) -> bytes:
    message = meta_text_message(text, wamid=wamid)
    message["timestamp"] = str(int(sent_at.timestamp()))
    return meta_delivery([message])


def preferences(value: str, timestamp: int = 1731705721) -> bytes:
    document = json.loads(fixture_text("meta_user_preferences.json"))
    preference = document["entry"][0]["changes"][0]["value"]["user_preferences"][0]
    preference.update(
        value=value,
        timestamp=timestamp,
        detail=f"User requested to {value} marketing messages",
    )
    return json.dumps(document, separators=(",", ":")).encode()


async def retailer(db: AsyncEngine, whatsapp_id: str) -> dict[str, Any]:
    async with db.connect() as connection:
        row = (
            await connection.execute(
                select(retailers).where(retailers.c.whatsapp_id == whatsapp_id)
            )
        ).one()
    return dict(row._mapping)


async def ledger(db: AsyncEngine) -> list[tuple[str, str, str]]:
    async with db.connect() as connection:
        rows = await connection.execute(
            select(
                consent_events.c.change, consent_events.c.source, consent_events.c.source_ref
            ).order_by(consent_events.c.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def expire_idempotency_records(db: AsyncEngine) -> None:
    async with db.begin() as connection:
        await connection.execute(
            update(webhook_idempotency).values(expires_at=utcnow() - timedelta(seconds=1))
        )


async def test_stop_from_twilio_is_recorded_once_however_often_it_is_retried(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    sid = new_sid()
    assert await twilio_says(client, "STOP", sid) == replies.said(replies.STOPPED)
    stopped = await retailer(db, TWILIO_SENDER)
    assert stopped["opted_out_at"] is not None

    assert await twilio_says(client, "STOP", sid) == replies.said(replies.STOPPED)  # replayed
    await expire_idempotency_records(db)
    assert await twilio_says(client, "STOP", sid) == replies.said(replies.STOPPED)  # run again
    assert await ledger(db) == [("stop", "twilio", sid)]
    assert (await retailer(db, TWILIO_SENDER))["opted_out_at"] == stopped["opted_out_at"]


async def test_start_clears_the_stop_and_both_stay_in_the_ledger(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    stop, start = new_sid(), new_sid()
    await twilio_says(client, "STOP", stop)
    assert await twilio_says(client, "start", start) == replies.said(replies.STARTED)
    assert (await retailer(db, TWILIO_SENDER))["opted_out_at"] is None
    assert await ledger(db) == [("stop", "twilio", stop), ("start", "twilio", start)]


async def test_cancel_is_our_order_command_not_an_opt_out(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    reply = await twilio_says(client, "CANCEL")
    assert reply == "Say which order to cancel, for example: CANCEL ORD-000123"
    assert await ledger(db) == []


async def test_a_stop_delivered_after_a_later_start_does_not_win(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    now = utcnow().replace(microsecond=0)
    start = meta_text_at("START", now - timedelta(minutes=1))
    late_stop = meta_text_at("STOP", now - timedelta(minutes=2))  # sent first, delivered last
    await deliver(client, start)
    await deliver(client, late_stop)
    assert (await retailer(db, META_RETAILER))["opted_out_at"] is None
    assert [change for change, _, _ in await ledger(db)] == ["start", "stop"]


async def test_user_preferences_stop_and_resume_through_the_meta_webhook_are_recorded_once(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    stop = preferences("stop", 1731705721)
    answer = await deliver(client, stop)
    assert answer == {"received": 0, "statuses": 0, "dead_lettered": 0, "preferences": 1}
    await deliver(client, stop)  # Meta's redelivery: replayed
    await expire_idempotency_records(db)
    await deliver(client, stop)  # after the record expired: the ledger's key holds
    assert await ledger(db) == [("stop", "meta_preferences", "16505551234:stop:1731705721")]
    stopped = await retailer(db, PREFERENCE_RETAILER)
    assert as_utc(stopped["opted_out_at"]) == datetime.fromtimestamp(1731705721, UTC)
    assert stopped["name"] == "Sheena Nelson"
    assert stopped["last_inbound_at"] is None  # a preference is no message from the customer

    await deliver(client, preferences("resume", 1731705800))
    assert (await retailer(db, PREFERENCE_RETAILER))["opted_out_at"] is None
    async with db.connect() as connection:
        details = list(await connection.scalars(select(consent_events.c.detail)))
    assert details == [
        "User requested to stop marketing messages",
        "User requested to resume marketing messages",
    ]


async def test_a_preference_we_cannot_read_is_kept_as_a_dead_letter(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    answer = await deliver(client, preferences("maybe"))
    assert answer["dead_lettered"] == 1
    async with db.connect() as connection:
        reasons = list(await connection.scalars(select(dead_letters.c.reason)))
    assert reasons == ["A user preference of an unknown value: 'maybe'."]
    assert await ledger(db) == []


async def test_the_last_message_time_moves_forward_only(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    now = utcnow().replace(microsecond=0)
    await deliver(client, meta_text_at("HELP", now - timedelta(minutes=5)))
    await deliver(client, meta_text_at("HELP", now - timedelta(hours=2)))  # a late retry
    seen = as_utc((await retailer(db, META_RETAILER))["last_inbound_at"])
    assert seen == now - timedelta(minutes=5)

    await deliver(client, meta_text_at("HELP", now - timedelta(minutes=1)))
    seen = as_utc((await retailer(db, META_RETAILER))["last_inbound_at"])
    assert seen == now - timedelta(minutes=1)

    before = utcnow()
    await twilio_says(client, "HELP")  # Twilio gives no time: when it reached us
    seen = as_utc((await retailer(db, TWILIO_SENDER))["last_inbound_at"])
    assert before <= seen <= utcnow()


async def test_concurrent_copies_of_a_stop_under_different_keys_record_one_change(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    """Copies that the idempotency records cannot join (each under its own Idempotency-Key)
    meet the ledger's business key: one row, and every copy is told the same."""
    sid = new_sid()
    pairs = inbound_form("STOP", sid=sid)
    headers = signed_headers(INBOUND_PATH, pairs)

    async def copy(index: int) -> str:
        response = await client.post(
            INBOUND_PATH,
            content=encode(pairs),
            headers={**headers, "Idempotency-Key": f"copy-{index}"},
        )
        assert response.status_code == 200, response.text
        return reply_text(response)

    answers = await asyncio.wait_for(asyncio.gather(*(copy(i) for i in range(8))), timeout=60)
    assert set(answers) == {replies.said(replies.STOPPED)}
    assert await ledger(db) == [("stop", "twilio", sid)]
    assert (await retailer(db, TWILIO_SENDER))["opted_out_at"] is not None
