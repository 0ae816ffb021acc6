"""Outbox rows and customers as the webhook and the fulfilment services would have written
them, for the senders' tests: a retailer with a last message and consent of the test's choosing,
and notifications queued for them."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.clock import utcnow
from whatsorder.db.tables import consent_events, outbox_messages, retailers

TEMPLATES = {
    "dispatched": {
        "en": {
            "meta": {"name": "order_dispatched", "parameters": ["order_number", "total"]},
            "twilio": {
                "content_sid": "HX" + "a" * 32,
                "variables": {"1": "order_number", "2": "total"},
            },
        },
        "hi": {
            "meta": {"name": "order_dispatched_hi", "parameters": ["order_number", "total"]},
            "twilio": {
                "content_sid": "HX" + "b" * 32,
                "variables": {"1": "order_number", "2": "total"},
            },
        },
    },
    "confirmed": {
        "en": {
            "meta": {"name": "order_confirmed", "language": "en_US", "parameters": []},
            "twilio": {"content_sid": "HX" + "c" * 32, "variables": {"1": "order_number"}},
        }
    },
}
PARAMS = {"order_number": "ORD-000042", "total": "₹690.00"}


async def customer(
    db: AsyncEngine,
    whatsapp_id: str,
    *,
    last_inbound_at: datetime | None = None,
    opted_out_at: datetime | None = None,
) -> int:
    """A retailer with this last message and consent (made, or changed if it exists); its id."""
    values = {"last_inbound_at": last_inbound_at, "opted_out_at": opted_out_at}
    async with db.begin() as connection:
        found = await connection.scalar(
            select(retailers.c.id).where(retailers.c.whatsapp_id == whatsapp_id)
        )
        if found is not None:
            await connection.execute(
                update(retailers).where(retailers.c.id == found).values(**values)
            )
            return int(found)
        added = await connection.execute(
            insert(retailers)
            .values(whatsapp_id=whatsapp_id, name="Asha Rao", created_at=utcnow(), **values)
            .returning(retailers.c.id)
        )
        return int(added.scalar_one())


async def queue(
    db: AsyncEngine,
    provider: str,
    recipient: str,
    body: str,
    *,
    event: str | None = "dispatched",
    language: str | None = None,
    params: dict[str, Any] | None = None,
    proactive: bool = True,
    order_id: int | None = None,
    created_at: datetime | None = None,
) -> str:
    """A pending outbox row (a notification unless ``proactive`` is false); its key."""
    key = f"notify:{secrets.token_hex(6)}" if proactive else f"reply:{secrets.token_hex(6)}"
    now = created_at or utcnow()
    async with db.begin() as connection:
        await connection.execute(
            insert(outbox_messages).values(
                provider=provider,
                recipient=recipient,
                body=body,
                idempotency_key=key,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                order_id=order_id,
                event=event if proactive else None,
                language=language,
                params=None if params is None else json.dumps(params),
                proactive=proactive,
            )
        )
    return key


async def row(db: AsyncEngine, key: str) -> dict[str, Any]:
    async with db.connect() as connection:
        found = await connection.execute(
            select(outbox_messages).where(outbox_messages.c.idempotency_key == key)
        )
        return dict(found.mappings().one())


async def consent_ledger(db: AsyncEngine, retailer_id: int) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        found = await connection.execute(
            select(consent_events)
            .where(consent_events.c.retailer_id == retailer_id)
            .order_by(consent_events.c.id)
        )
        return [dict(item) for item in found.mappings()]


async def opted_out_at(db: AsyncEngine, retailer_id: int) -> datetime | None:
    async with db.connect() as connection:
        found: datetime | None = await connection.scalar(
            select(retailers.c.opted_out_at).where(retailers.c.id == retailer_id)
        )
        return found
