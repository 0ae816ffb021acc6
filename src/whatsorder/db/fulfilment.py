"""Fulfilment on one connection: the order's state by compare-and-set, its transitions once.

Two operators pressing the same button at once both read the order in its old state; the
compare-and-set lets one move it (PostgreSQL makes the other's UPDATE wait for the winner's
commit, then find the state gone; SQLite's transactions begin IMMEDIATE, one at a time), and
``UNIQUE(order_id, to_state)`` is the business key behind it: a state is reached once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.dialect import upsert
from whatsorder.db.repository import one_order
from whatsorder.db.tables import order_transitions, orders, retailers
from whatsorder.ordering.model import Fulfilment, Order
from whatsorder.ordering.notifications import Recipient


class FulfilmentRepository:
    """Implements `whatsorder.ordering.ports.FulfilmentRepository` inside the caller's
    transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def order(self, order_id: int) -> Order | None:
        return await one_order(self._connection, orders.c.id == order_id)

    async def customer(self, order_id: int) -> Recipient:
        row = (
            await self._connection.execute(
                select(orders.c.source, retailers.c.whatsapp_id, retailers.c.language)
                .join(retailers, retailers.c.id == orders.c.retailer_id)
                .where(orders.c.id == order_id)
            )
        ).one()
        return Recipient(whatsapp_id=row.whatsapp_id, provider=row.source, language=row.language)

    async def move(
        self, order_id: int, expected: Fulfilment, new: Fulfilment, now: datetime
    ) -> bool:
        result = await self._connection.execute(
            update(orders)
            .where(orders.c.id == order_id, orders.c.fulfilment == expected.value)
            .values(fulfilment=new.value, fulfilment_changed_at=now)
        )
        return result.rowcount == 1

    async def add_transition(
        self, order_id: int, from_state: Fulfilment, to_state: Fulfilment, actor: str, now: datetime
    ) -> bool:
        result = await self._connection.execute(
            upsert(self._connection, order_transitions)
            .values(
                order_id=order_id,
                from_state=from_state.value,
                to_state=to_state.value,
                actor=actor[:64],
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["order_id", "to_state"])
        )
        return result.rowcount == 1
