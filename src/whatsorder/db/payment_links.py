"""Payment links on one connection, inside the caller's transaction (issue #17).

One row per ``(provider, reference)``: the reference names the order, the amount and the
currency, the key the provider deduplicates on too, so whoever stores a link for it stores the
same one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.dialect import upsert
from whatsorder.db.tables import orders, payment_links
from whatsorder.ordering.model import OrderStatus
from whatsorder.ordering.payment_model import LinkStatus, StoredLink

MAX_ERROR_CHARS = 500  # payment_links.last_error


class PaymentLinkRepository:
    """Implements `whatsorder.ordering.ports.PaymentLinkRepository`."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def find(self, provider: str, reference: str) -> StoredLink | None:
        row = (
            await self._connection.execute(
                select(payment_links).where(
                    payment_links.c.provider == provider, payment_links.c.reference == reference
                )
            )
        ).first()
        return None if row is None else _link(row)

    async def of_order(self, order_id: int) -> list[StoredLink]:
        rows = await self._connection.execute(
            select(payment_links)
            .where(payment_links.c.order_id == order_id)
            .order_by(payment_links.c.id)
        )
        return [_link(row) for row in rows]

    async def store_live(
        self, link: StoredLink, provider_link_id: str, url: str, now: datetime
    ) -> StoredLink:
        """Keep the provider's link for ``link``'s reference: a row that failed before is live
        now; a row already live keeps what it has (the provider gave the same link)."""
        table = payment_links
        statement = upsert(self._connection, table).values(
            **_key(link),
            provider_link_id=provider_link_id,
            url=url,
            status=LinkStatus.LIVE.value,
            created_at=now,
            updated_at=now,
        )
        await self._connection.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "reference"],
                set_={
                    "provider_link_id": statement.excluded.provider_link_id,
                    "url": statement.excluded.url,
                    "status": statement.excluded.status,
                    "last_error": None,
                    "updated_at": statement.excluded.updated_at,
                },
                where=table.c.status == LinkStatus.FAILED.value,
            )
        )
        stored = await self.find(link.provider, link.reference)
        assert stored is not None
        return stored

    async def store_failure(self, link: StoredLink, error: str, now: datetime) -> None:
        """Note the provider's refusal for the operator, unless a link for it is live."""
        table = payment_links
        statement = upsert(self._connection, table).values(
            **_key(link),
            status=LinkStatus.FAILED.value,
            last_error=error[:MAX_ERROR_CHARS],
            created_at=now,
            updated_at=now,
        )
        await self._connection.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "reference"],
                set_={"last_error": statement.excluded.last_error, "updated_at": now},
                where=table.c.status == LinkStatus.FAILED.value,
            )
        )


def _key(link: StoredLink) -> dict[str, object]:
    return {
        "order_id": link.order_id,
        "provider": link.provider,
        "reference": link.reference,
        "amount": link.amount,
        "currency": link.currency,
    }


def _link(row: Row[Any]) -> StoredLink:
    return StoredLink(
        order_id=row.order_id,
        provider=row.provider,
        reference=row.reference,
        amount=row.amount,
        currency=row.currency,
        status=LinkStatus(row.status),
        url=row.url,
        provider_link_id=row.provider_link_id,
        last_error=row.last_error,
    )


async def awaiting_payment(
    connection: AsyncConnection, placed_before: datetime, limit: int = 20
) -> tuple[int, list[dict[str, Any]]]:
    """Orders still unpaid that were placed before ``placed_before``: how many, and the oldest
    ``limit`` with their live payment link if they have one (what a sweep leaves to chase)."""
    unpaid = (orders.c.status == OrderStatus.PLACED.value) & (orders.c.created_at < placed_before)
    count = await connection.scalar(select(func.count()).select_from(orders).where(unpaid))
    live = payment_links.c.status == LinkStatus.LIVE.value
    rows = await connection.execute(
        select(
            orders.c.id,
            orders.c.total,
            orders.c.currency,
            orders.c.created_at,
            payment_links.c.provider,
            payment_links.c.url,
        )
        .outerjoin(payment_links, (payment_links.c.order_id == orders.c.id) & live)
        .where(unpaid)
        .order_by(orders.c.created_at, orders.c.id)
        .limit(limit)
    )
    return int(count or 0), [dict(row._mapping) for row in rows]
