"""Dead letters: signed deliveries (or parts of them) we could not process, kept to inspect.

They are answered 200 all the same: a provider that retries anything else (Meta, for seven
days) would otherwise send the same unprocessable payload again and again. Each is kept once
per business key (``delivery_key``), which outlives the idempotency record: a redelivery
after that record expired and was cleaned up finds the row already there and adds none.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.dialect import upsert
from whatsorder.db.tables import dead_letters

MAX_REASON_CHARS = 500  # dead_letters.reason
MAX_DELIVERY_KEY_CHARS = 255  # dead_letters.delivery_key


class DeadLetterRepository:
    """The dead letters on one connection, inside the caller's transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def add(
        self,
        provider: str,
        delivery_key: str,
        reason: str,
        body: str,
        now: datetime,
        payload: str | None = None,
    ) -> bool:
        """Keep ``body`` (already redacted by the caller) with why it could not be processed,
        unless this provider's ``delivery_key`` was kept before. True if a row was added.
        ``payload``, the delivery unredacted for a re-drive, is never shown.

        ``INSERT … ON CONFLICT DO NOTHING`` rather than check-then-insert: two copies racing
        find one row, and on PostgreSQL the second waits for the first to commit.
        """
        if not 1 <= len(delivery_key) <= MAX_DELIVERY_KEY_CHARS:
            raise ValueError(f"A dead letter's key must be 1-{MAX_DELIVERY_KEY_CHARS} characters.")
        result = await self._connection.execute(
            upsert(self._connection, dead_letters)
            .values(
                provider=provider,
                delivery_key=delivery_key,
                # The reason may quote the payload; PostgreSQL text cannot hold NUL.
                reason=reason.replace("\x00", "\ufffd")[:MAX_REASON_CHARS],
                body=body.replace("\x00", "\ufffd"),
                # A payload with NUL could only be kept altered: kept none, as not re-drivable.
                payload=None if payload is None or "\x00" in payload else payload,
                received_at=now,
            )
            .on_conflict_do_nothing(index_elements=["provider", "delivery_key"])
        )
        return result.rowcount == 1


async def add_dead_letter(
    connection: AsyncConnection,
    provider: str,
    delivery_key: str,
    reason: str,
    body: str,
    now: datetime,
) -> bool:
    """`DeadLetterRepository.add` on ``connection``, outside any unit of work.

    The service is `whatsorder.ordering.services.keep_dead_letter`; this stays for callers
    that hold a bare connection.
    """
    return await DeadLetterRepository(connection).add(provider, delivery_key, reason, body, now)
