"""Meta's dead letters: a signed item we cannot process is kept once, for good.

Its idempotency record expires (and cleanup deletes it) long before Meta stops retrying, so the
row's own business key — the provider and the hash of what was kept — is what keeps a late
redelivery from storing a second copy. Through the public route, signed, on both databases.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    META_APP_SECRET,
    META_PATH,
    META_VERIFY_TOKEN,
    app_client,
    meta_delivery,
    meta_headers,
    meta_status,
    meta_text_message,
    new_wamid,
)
from whatsorder.db.dead_letters import add_dead_letter
from whatsorder.db.tables import dead_letters, webhook_idempotency
from whatsorder.scheduler import run_cleanup
from whatsorder_idempotency.record import utcnow


@pytest.fixture
async def client(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(meta_app_secret=META_APP_SECRET, meta_verify_token=META_VERIFY_TOKEN)
    async with app_client(app) as http:
        yield http


async def deliver(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    """POST a delivery signed over exactly these bytes, as Meta signs it."""
    return await client.post(META_PATH, content=body, headers=meta_headers(body))


async def kept(db: AsyncEngine) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        result = await connection.execute(select(dead_letters).order_by(dead_letters.c.id))
        return [dict(row) for row in result.mappings()]


async def records(db: AsyncEngine) -> int:
    async with db.connect() as connection:
        statement = select(func.count()).select_from(webhook_idempotency)
        return int(await connection.scalar(statement) or 0)


async def expire_every_record_and_clean_up(db: AsyncEngine) -> None:
    """What a day (the TTL) and the cleanup schedule do to the idempotency records."""
    async with db.begin() as connection:
        await connection.execute(
            update(webhook_idempotency).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    run = await run_cleanup(db, trigger="cli")
    assert run.outcome == "completed", run
    assert await records(db) == 0


def unusable_status() -> dict[str, Any]:
    return meta_status(new_wamid(), "s" * 33)  # longer than message_statuses.status holds


BODIES = {
    "an unreadable delivery": lambda: b'{"entry": [ not json',
    "an unusable status": lambda: meta_delivery(statuses=[unusable_status()]),
    "an unusable message": lambda: meta_delivery(
        [{**meta_text_message("ORDER 1 x ATTA-5KG"), "id": "wamid with spaces"}]
    ),
}


@pytest.mark.parametrize("case", list(BODIES))
async def test_a_dead_letter_redelivered_after_its_record_expired_and_was_cleaned_is_kept_once(
    client: httpx.AsyncClient, db: AsyncEngine, case: str
) -> None:
    body = BODIES[case]()
    first = await deliver(client, body)
    assert first.status_code == 200, first.text
    assert first.json()["dead_lettered"] == 1
    [letter] = await kept(db)

    await expire_every_record_and_clean_up(db)
    again = await deliver(client, body)

    assert again.status_code == 200, again.text
    assert again.json()["dead_lettered"] == 1  # answered as before: still not processed
    assert await kept(db) == [letter]  # the business key held: no second copy


async def test_concurrent_copies_of_a_dead_letter_keep_one_row(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    status = unusable_status()
    bodies = [meta_delivery(statuses=[status]) for _ in range(6)]
    bodies.append(meta_delivery(statuses=[meta_status(new_wamid(), "sent"), status]))

    responses = await asyncio.gather(*(deliver(client, body) for body in bodies))

    assert [response.status_code for response in responses] == [200] * len(bodies)
    [letter] = await kept(db)
    assert letter["provider"] == "meta"
    assert letter["delivery_key"] is not None


async def test_a_dead_letter_row_is_added_once_per_provider_and_key(db: AsyncEngine) -> None:
    now = utcnow()
    async with db.begin() as connection:
        added = [
            await add_dead_letter(connection, "meta", "k1", "reason", "body", now),
            await add_dead_letter(connection, "meta", "k1", "other reason", "other", now),
            await add_dead_letter(connection, "stripe", "k1", "reason", "body", now),
            await add_dead_letter(connection, "meta", "k2", "nul \x00 here", "b\x00dy", now),
        ]
    assert added == [True, False, True, True]
    letters = await kept(db)
    assert [(row["provider"], row["delivery_key"]) for row in letters] == [
        ("meta", "k1"),
        ("stripe", "k1"),
        ("meta", "k2"),
    ]
    assert letters[0]["reason"] == "reason"
    assert "\x00" not in letters[2]["reason"] + letters[2]["body"]
