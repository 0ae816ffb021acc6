"""The core guarantee: a webhook takes effect once, however it is retried."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from support import INBOUND_PATH, encode, inbound_form, reply_text, signed_headers, snapshot
from whatsorder.db.tables import orders, webhook_idempotency
from whatsorder.ordering.demo import DEMO_CATALOGUE
from whatsorder_idempotency.record import utcnow

ATTA_STOCK = next(p.stock for p in DEMO_CATALOGUE if p.sku == "ATTA-5KG")


async def post(client: httpx.AsyncClient, pairs: list[tuple[str, str]]) -> httpx.Response:
    return await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )


async def test_a_webhook_sent_again_replays_the_identical_reply_and_orders_once(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 2 x ATTA-5KG, 1 x TOOR-1KG")
    first = await post(client, pairs)
    second = await post(client, pairs)

    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/xml")
    assert "Order ORD-" in reply_text(first)
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    state = await snapshot(db)
    assert (state.orders, state.order_items, state.ledger_entries) == (1, 2, 1)
    assert state.stock["ATTA-5KG"] == ATTA_STOCK - 2


async def test_form_fields_in_another_order_are_the_same_request(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    await post(client, pairs)
    replay = await post(client, list(reversed(pairs)))
    assert replay.headers["idempotent-replayed"] == "true"
    assert (await snapshot(db)).orders == 1


async def test_the_same_message_sid_with_another_body_gets_422_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    sid = "SM" + "1" * 32
    await post(client, inbound_form("ORDER 2 x ATTA-5KG", sid=sid))
    before = await snapshot(db)
    other = await post(client, inbound_form("ORDER 9 x ATTA-5KG", sid=sid))

    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    problem = other.json()
    assert problem["status"] == 422
    assert problem["type"].endswith("key-reused")
    assert await snapshot(db) == before


async def test_a_handler_failure_is_not_stored_and_the_retry_succeeds(
    client: httpx.AsyncClient, db: AsyncEngine, monkeypatch: object
) -> None:
    import pytest

    from whatsorder.db.repository import OrderingRepository

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    real_add_ledger_entry = OrderingRepository.add_ledger_entry

    async def failing_ledger(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("injected database failure after the order rows were written")

    pairs = inbound_form("ORDER 3 x SUGAR-1KG")
    monkeypatch.setattr(OrderingRepository, "add_ledger_entry", failing_ledger)
    failed = await post(client, pairs)
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert "injected" not in failed.text  # no internals leak
    state = await snapshot(db)
    assert (state.orders, state.order_items, state.ledger_entries) == (0, 0, 0)
    assert state.idempotency_records == 0  # the claim rolled back with the order

    monkeypatch.setattr(OrderingRepository, "add_ledger_entry", real_add_ledger_entry)
    retried = await post(client, pairs)
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert "Order ORD-" in reply_text(retried)
    state = await snapshot(db)
    assert (state.orders, state.ledger_entries, state.idempotency_records) == (1, 1, 1)


async def test_after_the_record_expired_the_same_message_sid_creates_no_second_order(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 2 x OIL-1L")
    first = await post(client, pairs)
    async with db.begin() as connection:
        await connection.execute(
            update(webhook_idempotency).values(expires_at=utcnow() - timedelta(seconds=1))
        )

    again = await post(client, pairs)

    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers  # processed again, not replayed...
    assert reply_text(again) == reply_text(first)  # ...and it found the same order
    state = await snapshot(db)
    assert (state.orders, state.ledger_entries) == (1, 1)
    assert state.stock["OIL-1L"] == next(p.stock for p in DEMO_CATALOGUE if p.sku == "OIL-1L") - 2
    async with db.connect() as connection:
        record = (await connection.execute(select(webhook_idempotency))).mappings().one()
        order_id = await connection.scalar(select(orders.c.id))
    assert record["epoch"] == 2  # taken over once
    assert record["order_id"] == order_id
    assert record["expires_at"] is not None


async def test_a_rejected_order_is_replayed_and_leaves_no_rows(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 5000 x ATTA-5KG")
    first = await post(client, pairs)
    second = await post(client, pairs)
    assert first.status_code == 200
    assert "could not place your order" in reply_text(first)
    assert second.headers["idempotent-replayed"] == "true"
    state = await snapshot(db)
    assert (state.orders, state.ledger_entries) == (0, 0)
    assert state.stock["ATTA-5KG"] == ATTA_STOCK
    assert state.retailers == 1  # registered on the first message all the same
