"""The consent ledger: a customer's STOP and START, each recorded once, the newest winning.

Every change is a row of ``consent_events``, once per provider message (``UNIQUE(source,
source_ref)``): a retried STOP, even after its idempotency record expired, records nothing
new. ``retailers.opted_out_at`` says where consent stands; a change moves it only if it
happened after the change that set it (``consent_changed_at``), so a STOP delivered late
never undoes the START the customer sent after it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.dialect import upsert
from whatsorder.db.tables import consent_events, retailers
from whatsorder.ordering.customer import ConsentChange

__all__ = ["ConsentChange", "ConsentRepository"]

MAX_DETAIL_CHARS = 200  # consent_events.detail


class ConsentRepository:
    """Consent on one connection, inside the caller's transaction (implements
    `whatsorder.ordering.ports.ConsentRepository`)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def record(
        self,
        retailer_id: int,
        change: ConsentChange,
        source: str,
        source_ref: str,
        occurred_at: datetime,
        now: datetime,
        detail: str | None = None,
    ) -> bool:
        """Note a change once per ``(source, source_ref)``; True if it was new.

        A new change moves the retailer's consent unless a later change is already recorded.
        """
        inserted = await self._connection.execute(
            upsert(self._connection, consent_events)
            .values(
                retailer_id=retailer_id,
                change=change.value,
                source=source,
                source_ref=source_ref,
                detail=None if detail is None else detail[:MAX_DETAIL_CHARS],
                occurred_at=occurred_at,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["source", "source_ref"])
        )
        if inserted.rowcount != 1:
            return False
        await self._connection.execute(
            update(retailers)
            .where(
                retailers.c.id == retailer_id,
                or_(
                    retailers.c.consent_changed_at.is_(None),
                    retailers.c.consent_changed_at <= occurred_at,
                ),
            )
            .values(
                opted_out_at=occurred_at if change is ConsentChange.STOP else None,
                consent_changed_at=occurred_at,
            )
        )
        return True

    async def opted_out(self, retailer_id: int) -> bool:
        """Whether the customer has said STOP (and not START since)."""
        found = await self._connection.scalar(
            select(retailers.c.opted_out_at).where(retailers.c.id == retailer_id)
        )
        return found is not None
