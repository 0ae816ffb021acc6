"""The customer's last message and language, on the retailer's row, inside the caller's
transaction (implements `whatsorder.ordering.ports.CustomerRepository`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import retailers
from whatsorder.ordering.customer import Customer


class CustomerRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def seen(self, retailer_id: int, message_at: datetime) -> Customer:
        """Move the last message to ``message_at`` unless it is already there or later (a late
        retry of an older message must not shorten the 24-hour window), then read the row."""
        await self._connection.execute(
            update(retailers)
            .where(
                retailers.c.id == retailer_id,
                or_(
                    retailers.c.last_inbound_at.is_(None),
                    retailers.c.last_inbound_at < message_at,
                ),
            )
            .values(last_inbound_at=message_at)
        )
        language = await self._connection.scalar(
            select(retailers.c.language).where(retailers.c.id == retailer_id)
        )
        return Customer(retailer_id, language)

    async def choose_language(self, retailer_id: int, language: str) -> None:
        await self._connection.execute(
            update(retailers).where(retailers.c.id == retailer_id).values(language=language)
        )
