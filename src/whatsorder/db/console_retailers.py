"""What the console shows of one retailer (a customer): who, their language, their consent now
and every change of it, their last message, and how many orders they placed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.db.tables import consent_events, orders, retailers

LEDGER_ROWS = 200  # a customer's consent changes; far more than any real one has


class ConsoleRetailers:
    def __init__(self, database: AsyncEngine) -> None:
        self._database = database

    async def retailer(self, retailer_id: int) -> dict[str, Any] | None:
        """The retailer's row with ``orders`` (how many) and ``consent`` (the ledger's rows,
        newest change first); None when there is no such retailer."""
        async with self._database.connect() as connection:
            found = (
                await connection.execute(select(retailers).where(retailers.c.id == retailer_id))
            ).first()
            if found is None:
                return None
            detail = dict(found._mapping)
            detail["orders"] = await connection.scalar(
                select(func.count()).select_from(orders).where(orders.c.retailer_id == retailer_id)
            )
            ledger = await connection.execute(
                select(consent_events)
                .where(consent_events.c.retailer_id == retailer_id)
                .order_by(consent_events.c.occurred_at.desc(), consent_events.c.id.desc())
                .limit(LEDGER_ROWS)
            )
            detail["consent"] = [dict(row._mapping) for row in ledger]
            return detail
