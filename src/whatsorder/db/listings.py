"""Read-only listings for operators: the latest orders, dead letters, an order's total."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.clock import isoformat
from whatsorder.db.tables import dead_letters, orders, retailers
from whatsorder.ordering.model import order_number


async def recent_orders(connection: AsyncConnection, limit: int = 50) -> list[dict[str, Any]]:
    statement = (
        select(
            orders.c.id,
            orders.c.status,
            orders.c.fulfilment,
            orders.c.total,
            orders.c.currency,
            orders.c.source,
            orders.c.created_at,
            retailers.c.name.label("retailer"),
        )
        .join(retailers, retailers.c.id == orders.c.retailer_id)
        .order_by(orders.c.id.desc())
        .limit(limit)
    )
    return [
        {
            "number": order_number(row.id),
            "status": row.status,
            "fulfilment": row.fulfilment,
            "total": row.total,
            "currency": row.currency,
            "retailer": row.retailer,
            "source": row.source,
            "created_at": row.created_at.isoformat() if row.created_at else None,
        }
        for row in await connection.execute(statement)
    ]


async def recent_dead_letters(connection: AsyncConnection, limit: int = 50) -> list[dict[str, Any]]:
    """Signed deliveries that could not be processed, newest first (bodies already redacted)."""
    rows = await connection.execute(
        # Never the payload (the unredacted delivery a re-drive needs).
        select(
            dead_letters.c.id,
            dead_letters.c.provider,
            dead_letters.c.reason,
            dead_letters.c.received_at,
            dead_letters.c.body,
        )
        .order_by(dead_letters.c.id.desc())
        .limit(limit)
    )
    return [
        {
            "id": row.id,
            "provider": row.provider,
            "reason": row.reason,
            "received_at": isoformat(row.received_at),
            "body": row.body,
        }
        for row in rows
    ]


async def order_total(connection: AsyncConnection, order_id: int) -> tuple[int, str] | None:
    """The order's total and currency; ``None`` when there is no such order."""
    row = (
        await connection.execute(
            select(orders.c.total, orders.c.currency).where(orders.c.id == order_id)
        )
    ).first()
    return None if row is None else (int(row.total), str(row.currency))
