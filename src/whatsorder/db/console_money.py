"""What the console shows of money: payments by provider and day, and the exceptions to resolve."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.clock import utcnow
from whatsorder.db import operators as operator_rows
from whatsorder.db.tables import payment_exceptions, payments
from whatsorder.operators import StaleEdit
from whatsorder.ordering.model import order_number


class ConsoleMoney:
    def __init__(self, database: AsyncEngine) -> None:
        self._database = database

    async def payments_by_day(self, days: int = 30) -> list[dict[str, Any]]:
        """Per provider, day, status and currency: how many events and their total."""
        day = func.date(payments.c.created_at)
        statement = (
            select(
                payments.c.provider,
                day.label("day"),
                payments.c.status,
                payments.c.currency,
                func.count().label("events"),
                func.sum(payments.c.amount).label("total"),
            )
            .where(payments.c.created_at >= utcnow() - timedelta(days=days))
            .group_by(payments.c.provider, day, payments.c.status, payments.c.currency)
            .order_by(day.desc(), payments.c.provider, payments.c.status)
        )
        async with self._database.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(statement)]

    async def exceptions(self, *, resolved: bool) -> list[dict[str, Any]]:
        table = payment_exceptions
        condition = table.c.resolved_at.is_not(None) if resolved else table.c.resolved_at.is_(None)
        statement = select(table).where(condition).order_by(table.c.id.desc()).limit(200)
        async with self._database.connect() as connection:
            rows = [dict(row._mapping) for row in await connection.execute(statement)]
        for row in rows:
            row["order"] = None if row["order_id"] is None else order_number(row["order_id"])
        return rows

    async def resolve(
        self, exception_id: int, resolution: str, operator: str, address: str
    ) -> None:
        """Record an operator's resolution once; a second one (two operators at once) is refused."""
        now = utcnow()
        table = payment_exceptions
        async with self._database.begin() as connection:
            changed = await connection.execute(
                update(table)
                .where(table.c.id == exception_id, table.c.resolved_at.is_(None))
                .values(resolved_at=now, resolved_by=operator, resolution=resolution[:500])
            )
            if changed.rowcount != 1:
                raise StaleEdit(
                    "This exception was resolved already (or does not exist): nothing was saved."
                )
            await operator_rows.record_action(
                connection,
                operator=operator,
                action="payment_exception.resolve",
                target=str(exception_id),
                before={"resolved": False},
                after={"resolved": True, "resolution": resolution[:500]},
                address=address,
                now=now,
            )
