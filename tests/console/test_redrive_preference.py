"""A Meta user_preferences change kept as a dead letter is re-driven like a message: through the
same key and the consent ledger's business key, so it records the change at most once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from console.test_redrive import app as app  # the app with its operators, as there
from console.test_redrive import deliver, letters, press, signed_in
from support import fixture_text
from whatsorder.db.tables import consent_events, webhook_idempotency


def preference(detail: str) -> bytes:
    document = json.loads(fixture_text("meta_user_preferences.json"))
    document["entry"][0]["changes"][0]["value"]["user_preferences"][0]["detail"] = detail
    return json.dumps(document, separators=(",", ":")).encode()


async def test_a_kept_preference_redriven_records_the_change_once(
    app: FastAPI, db: AsyncEngine
) -> None:
    async with signed_in(app, None) as meta:
        await deliver(meta, preference("User requested to stop marketing messages"))
        # The same change (same wa_id, value and time) with other content: kept, not run.
        changed = await deliver(meta, preference("Stopped from the chat"))
    assert changed["dead_lettered"] == 1
    async with db.begin() as connection:  # a day passes: the first copy's record expires
        await connection.execute(
            update(webhook_idempotency).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    [letter] = await letters(db)

    async with signed_in(app, "asha") as http:
        answer = await press(http, letter["id"])
    assert answer.status_code == 200, answer.text
    assert "consent recorded (once): stop of 2024-11-15 21:22 UTC" in answer.text
    assert "16505551234" not in answer.text
    [letter] = await letters(db)
    assert letter["redrive_state"] == "done"
    async with db.connect() as connection:
        rows = (await connection.execute(select(consent_events.c.detail))).all()
    assert [row.detail for row in rows] == ["User requested to stop marketing messages"]
