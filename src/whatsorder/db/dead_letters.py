"""Dead letters: signed deliveries (or parts of them) we could not process, kept to inspect.

They are answered 200 all the same: a provider that retries anything else (Meta, for seven
days) would otherwise send the same unprocessable payload again and again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import dead_letters

MAX_REASON_CHARS = 500  # dead_letters.reason


async def add_dead_letter(
    connection: AsyncConnection, provider: str, reason: str, body: str, now: datetime
) -> None:
    """Keep ``body`` (already redacted by the caller) with why it could not be processed."""
    await connection.execute(
        dead_letters.insert().values(
            provider=provider, reason=reason[:MAX_REASON_CHARS], body=body, received_at=now
        )
    )
