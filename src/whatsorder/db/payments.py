"""The payment data on one connection: events, exceptions and ledger entries, each written once.

Every write is ``INSERT … ON CONFLICT DO NOTHING`` on its business key, never check-then-insert:
two deliveries racing (or an event processed again after its idempotency record expired) find
the row the first one wrote, and on PostgreSQL the second waits for the first to commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import ledger_entries, orders, payment_exceptions, payments
from whatsorder.ordering.model import EntryType, LedgerEntry, OrderStatus
from whatsorder.ordering.payments import PayableOrder, PaymentEvent, PaymentException

_DETAIL_CHARS = 500  # payment_exceptions.detail


class PaymentRepository:
    """Reads and writes of payments, all inside the caller's transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self._insert = (
            postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        )

    async def order(self, order_id: int) -> PayableOrder | None:
        row = (
            await self._connection.execute(
                select(
                    orders.c.id,
                    orders.c.retailer_id,
                    orders.c.status,
                    orders.c.total,
                    orders.c.currency,
                ).where(orders.c.id == order_id)
            )
        ).first()
        if row is None:
            return None
        return PayableOrder(
            id=row.id,
            retailer_id=row.retailer_id,
            status=OrderStatus(row.status),
            total=row.total,
            currency=row.currency,
        )

    async def record_event(self, event: PaymentEvent, order_id: int, now: datetime) -> bool:
        """Note the event once per ``(provider, event id)``; True if it is new."""
        result = await self._connection.execute(
            self._insert(payments)
            .values(
                order_id=order_id,
                provider=event.provider,
                provider_event_id=event.event_id,
                provider_payment_id=event.payment_id,
                amount=event.amount,
                currency=event.currency.upper(),
                status=event.kind.value,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["provider", "provider_event_id"])
        )
        return result.rowcount == 1

    async def record_exception(
        self,
        event: PaymentEvent,
        order_id: int | None,
        exception: PaymentException,
        now: datetime,
    ) -> bool:
        """Note what an operator must look at, once per event and kind; True if it is new."""
        result = await self._connection.execute(
            self._insert(payment_exceptions)
            .values(
                provider=event.provider,
                provider_event_id=event.event_id,
                order_id=order_id,
                kind=exception.kind.value,
                expected_amount=exception.expected_amount,
                received_amount=exception.received_amount,
                currency=exception.currency,
                detail=exception.detail[:_DETAIL_CHARS],
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["provider", "provider_event_id", "kind"])
        )
        return result.rowcount == 1

    async def post_entry(self, order: PayableOrder, entry: LedgerEntry, now: datetime) -> bool:
        """Post ``entry`` on the order's retailer unless its business key exists; True if new."""
        result = await self._connection.execute(
            self._insert(ledger_entries)
            .values(
                retailer_id=order.retailer_id,
                order_id=order.id,
                entry_type=entry.entry_type.value,
                amount=entry.amount,
                currency=entry.currency,
                source=entry.source,
                source_ref=entry.source_ref,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["source", "source_ref", "entry_type"])
        )
        return result.rowcount == 1

    async def has_entry(self, source: str, source_ref: str, entry_type: EntryType) -> bool:
        found = await self._connection.scalar(
            select(ledger_entries.c.id).where(
                ledger_entries.c.source == source,
                ledger_entries.c.source_ref == source_ref,
                ledger_entries.c.entry_type == entry_type.value,
            )
        )
        return found is not None
