"""The idempotency health page at scale: bounded counts that say so, keys in flight found by
their partial index, and a key looked up under every webhook type the table holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.db import console_health
from whatsorder.db.operators import add_operator
from whatsorder.db.tables import webhook_idempotency
from whatsorder.operators import hash_password

PASSWORD = "correct horse battery"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def console(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(console_secret="a console secret for tests, long enough")
    async with db.begin() as connection:
        await add_operator(connection, "asha", "operator", hash_password(PASSWORD), NOW)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        signed = await http.post("/console/login", data={"name": "asha", "password": PASSWORD})
        assert signed.status_code == 303
        yield http
    await app.state.runtime.close()


def record(kind: str, key: str, *, status: str = "completed", expired: bool = False) -> dict:
    created = NOW - timedelta(minutes=5)
    return {
        "webhook_type": kind,
        "idempotency_key": key,
        "fingerprint": "f" * 64,
        "status": status,
        "epoch": 1,
        "locked_until": NOW + timedelta(seconds=30) if status == "in_progress" else None,
        "response_status": None if status == "in_progress" else 200,
        "response_body": None if status == "in_progress" else b'{"order":null}',
        "created_at": created,
        "completed_at": None if status == "in_progress" else created,
        "expires_at": NOW - timedelta(days=1) if expired else NOW + timedelta(days=1),
    }


async def add_records(db: AsyncEngine, rows: list[dict]) -> None:
    async with db.begin() as connection:
        await connection.execute(insert(webhook_idempotency), rows)
        if connection.dialect.name == "postgresql":
            await connection.execute(text("ANALYZE webhook_idempotency"))


async def test_counts_past_the_bound_say_they_are_not_exact(
    console: httpx.AsyncClient, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_records(db, [record("twilio_status", f"SM{n}", expired=n < 7) for n in range(12)])
    page = await console.get("/console/health")
    assert "<dt>Records</dt><dd>12</dd>" in page.text
    assert "<dt>Expired, awaiting cleanup</dt><dd>7</dd>" in page.text
    monkeypatch.setattr(console_health, "COUNT_BOUND", 5)
    page = await console.get("/console/health")
    assert page.status_code == 200
    if "postgresql" in str(db.url):  # the table's statistics (ANALYZE just ran) estimate it
        assert "<dd>about 12 (an estimate from the table&#39;s statistics)</dd>" in page.text
    else:
        assert "<dd>more than 5 (not counted further)</dd>" in page.text
    assert "<dt>Expired, awaiting cleanup</dt><dd>more than 5 (not counted further)" in page.text


async def test_keys_in_flight_show_and_completed_ones_do_not(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await add_records(
        db,
        [
            record("meta_message", "wamid.flying", status="in_progress"),
            record("meta_message", "wamid.landed"),
        ],
    )
    section = (await console.get("/console/health")).text.split("Keys in flight now", 1)[1]
    section = section.split("</table>", 1)[0]
    assert "wamid.flying" in section
    assert "wamid.landed" not in section


async def test_a_key_is_found_under_every_webhook_type_that_holds_it(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await add_records(
        db,
        [
            record("stripe", "evt_shared"),
            record("razorpay", "evt_shared"),
            record("zzz_a_type_of_the_future", "evt_shared"),
            record("razorpay", "evt_other"),
        ],
    )
    page = await console.get("/console/health", params={"key": "evt_shared"})
    found = page.text.split("Look up a key", 1)[1].split("</table>", 1)[0]
    for kind in ("stripe", "razorpay", "zzz_a_type_of_the_future"):
        assert f"<td>{kind}</td>" in found
    assert found.count("<tr><td>") == 3
    missing = await console.get("/console/health", params={"key": "evt_nobody"})
    assert "No record has this key." in missing.text
