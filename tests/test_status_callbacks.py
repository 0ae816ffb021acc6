"""Twilio status callbacks: each state recorded once, and a late one never moves a message back."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from support import STATUS_PATH, TWILIO_TOKEN, encode, new_sid, signed_headers, status_form
from whatsorder.db.repository import OrderingRepository
from whatsorder.db.tables import message_statuses, webhook_idempotency


async def post_status(
    client: httpx.AsyncClient, sid: str, status: str, *extra: tuple[str, str]
) -> httpx.Response:
    pairs = [*status_form(sid, status), *extra]
    return await client.post(
        STATUS_PATH, content=encode(pairs), headers=signed_headers(STATUS_PATH, pairs)
    )


async def stored(db: AsyncEngine, sid: str) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        rows = await connection.execute(
            select(message_statuses).where(message_statuses.c.message_id == sid)
        )
        return [dict(row) for row in rows.mappings()]


async def count(db: AsyncEngine, table: Any) -> int:
    async with db.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


def assert_empty_twiml(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(response.content)  # noqa: S314 (our own TwiML)
    assert root.tag == "Response"
    assert len(root) == 0
    assert response.content.endswith(b"<Response />")


async def test_a_status_callback_records_the_state_and_answers_empty_twiml(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    sid = new_sid()
    response = await post_status(client, sid, "delivered")
    assert_empty_twiml(response)
    [row] = await stored(db, sid)
    assert (row["provider"], row["status"], row["error_code"]) == ("twilio", "delivered", None)
    assert row["updated_at"] is not None


async def test_sent_then_delivered_then_read_is_recorded_in_order(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    sid = new_sid()
    for status in ("sent", "delivered", "read"):
        assert_empty_twiml(await post_status(client, sid, status))
        assert [row["status"] for row in await stored(db, sid)] == [status]
    assert await count(db, webhook_idempotency) == 3  # one record per MessageSid:MessageStatus


@pytest.mark.parametrize("late", ["delivered", "sent", "queued"])
async def test_a_late_lower_state_after_read_does_not_overwrite_it(
    client: httpx.AsyncClient, db: AsyncEngine, late: str
) -> None:
    sid = new_sid()
    assert_empty_twiml(await post_status(client, sid, "read"))
    assert_empty_twiml(await post_status(client, sid, late))
    assert [row["status"] for row in await stored(db, sid)] == ["read"]


async def test_a_failed_message_keeps_its_error_code(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    sid = new_sid()
    await post_status(client, sid, "sent")
    assert_empty_twiml(await post_status(client, sid, "undelivered", ("ErrorCode", "63016")))
    [row] = await stored(db, sid)
    assert (row["status"], row["error_code"]) == ("undelivered", "63016")


async def test_the_same_callback_twice_is_replayed_and_stored_once(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    sid = new_sid()
    first = await post_status(client, sid, "delivered")
    second = await post_status(client, sid, "delivered")
    assert_empty_twiml(first)
    assert "idempotent-replayed" not in first.headers
    assert_empty_twiml(second)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert len(await stored(db, sid)) == 1
    assert await count(db, webhook_idempotency) == 1


async def test_a_status_callback_with_a_bad_signature_gets_403_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = status_form(new_sid(), "delivered")
    forged = signed_headers(STATUS_PATH, pairs, token="not-" + TWILIO_TOKEN)
    response = await client.post(STATUS_PATH, content=encode(pairs), headers=forged)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith(":signature-invalid")
    assert TWILIO_TOKEN not in response.text
    assert await count(db, message_statuses) == 0
    assert await count(db, webhook_idempotency) == 0


def _delivered_waits_for(monkeypatch: pytest.MonkeyPatch, read_done: asyncio.Event) -> None:
    """Hold the ``delivered`` callback inside its transaction until ``read`` has committed."""
    real_advance = OrderingRepository.advance_message_status

    async def advance(self: OrderingRepository, *args: Any) -> bool:
        if args[2] != "read":
            await asyncio.wait_for(read_done.wait(), 10)
        return await real_advance(self, *args)

    monkeypatch.setattr(OrderingRepository, "advance_message_status", advance)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQLite has one writer
async def test_concurrent_delivered_and_read_callbacks_leave_read(
    client: httpx.AsyncClient, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = new_sid()
    assert_empty_twiml(await post_status(client, sid, "sent"))
    read_done = asyncio.Event()
    _delivered_waits_for(monkeypatch, read_done)
    delivered = asyncio.create_task(post_status(client, sid, "delivered"))
    await asyncio.sleep(0.1)  # delivered is now inside its transaction, before its write
    assert_empty_twiml(await post_status(client, sid, "read"))
    read_done.set()
    assert_empty_twiml(await delivered)
    assert [row["status"] for row in await stored(db, sid)] == ["read"]
