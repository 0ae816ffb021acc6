"""The inbox's record of deliveries: every outcome noted, written later in one batch."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from support import INBOUND_PATH, encode, inbound_form, signed_headers
from whatsorder.db.tables import inbound_deliveries


async def test_new_replayed_and_refused_deliveries_are_noted_and_written_in_one_flush(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    form = inbound_form("ORDER 1 x ATTA-5KG")
    headers = signed_headers(INBOUND_PATH, form)
    for _ in range(2):
        assert (
            await client.post(INBOUND_PATH, content=encode(form), headers=headers)
        ).status_code == 200
    forged = {**headers, "X-Twilio-Signature": "bm90IHRoZSBzaWduYXR1cmU="}
    assert (
        await client.post(INBOUND_PATH, content=encode(form), headers=forged)
    ).status_code == 403
    async with db.connect() as connection:  # nothing written yet: notes wait in memory
        assert (await connection.execute(select(inbound_deliveries))).first() is None
    written = await app.state.runtime.inbox.flush(app.state.runtime.database)
    assert written == 3
    async with db.connect() as connection:
        rows = (
            await connection.execute(
                select(
                    inbound_deliveries.c.webhook_type,
                    inbound_deliveries.c.idempotency_key,
                    inbound_deliveries.c.outcome,
                    inbound_deliveries.c.http_status,
                ).order_by(inbound_deliveries.c.id)
            )
        ).all()
    sid = dict(form)["MessageSid"]
    assert [tuple(row) for row in rows] == [
        ("twilio_inbound", sid, "new", None),
        ("twilio_inbound", sid, "replayed", None),
        ("twilio_inbound", None, "refused", 403),
    ]
