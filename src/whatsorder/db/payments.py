"""The payment data on one connection: events, exceptions and ledger entries, each written once.

Every write is ``INSERT … ON CONFLICT DO NOTHING`` on its business key, never check-then-insert:
two deliveries racing (or an event processed again after its idempotency record expired) find
the row the first one wrote, and on PostgreSQL the second waits for the first to commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from whatsorder.db.dialect import upsert
from whatsorder.db.repository import ledger_row
from whatsorder.db.tables import ledger_entries, orders, payment_exceptions, payments
from whatsorder.ordering.model import EntryType, LedgerEntry, OrderStatus
from whatsorder.ordering.payment_model import PayableOrder, PaymentEvent, PaymentException

_DETAIL_CHARS = 500  # payment_exceptions.detail


class PaymentRepository:
    """Reads and writes of payments, all inside the caller's transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def order(self, order_id: int, *, lock: bool = False) -> PayableOrder | None:
        """The order as a payment sees it; ``lock`` holds its row until the transaction ends."""
        statement = select(
            orders.c.id,
            orders.c.retailer_id,
            orders.c.status,
            orders.c.total,
            orders.c.currency,
        ).where(orders.c.id == order_id)
        if lock:
            # SQLite has no row locks (nor needs them: its writers take turns); the dialect
            # leaves the clause out.
            statement = statement.with_for_update()
        row = (await self._connection.execute(statement)).first()
        if row is None:
            return None
        return PayableOrder(
            id=row.id,
            retailer_id=row.retailer_id,
            status=OrderStatus(row.status),
            total=row.total,
            currency=row.currency,
        )

    async def lock_order(self, order_id: int) -> PayableOrder | None:
        """The order, its row locked: events about one order take turns, whatever they are."""
        return await self.order(order_id, lock=True)

    async def record_event(self, event: PaymentEvent, order_id: int, now: datetime) -> bool:
        """Note the event once per ``(provider, event id)``; True if it is new."""
        result = await self._connection.execute(
            upsert(self._connection, payments)
            .values(
                order_id=order_id,
                provider=event.provider,
                provider_event_id=event.event_id,
                provider_payment_id=event.payment_id,
                amount=event.amount,
                currency=event.currency.upper(),
                status=event.kind.value,
                refund_id=event.refund_id,
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
            upsert(self._connection, payment_exceptions)
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
            upsert(self._connection, ledger_entries)
            .values(ledger_row(order.retailer_id, order.id, entry, now))
            .on_conflict_do_nothing(index_elements=["source", "source_ref", "entry_type"])
        )
        return result.rowcount == 1

    async def credited(self, provider: str, payment_id: str) -> int | None:
        """What the ledger holds as this payment's credit; None when it holds none."""
        total = await self._connection.scalar(
            select(func.sum(ledger_entries.c.amount)).where(
                *self._of_payment(provider, payment_id, EntryType.PAYMENT_CREDIT)
            )
        )
        return None if total is None else int(total)

    async def refunded(self, provider: str, payment_id: str) -> int:
        """How much of this payment the ledger shows refunded (a positive amount)."""
        total = await self._connection.scalar(
            select(func.coalesce(func.sum(ledger_entries.c.amount), 0)).where(
                *self._of_payment(provider, payment_id, EntryType.REFUND_REVERSAL)
            )
        )
        return -int(total or 0)

    async def order_money(self, order_id: int) -> tuple[int, int]:
        """(credited, refunded) on the order, all its payments together, both positive."""
        amount = ledger_entries.c.amount
        kind = ledger_entries.c.entry_type
        row = (
            await self._connection.execute(
                select(
                    func.coalesce(
                        func.sum(case((kind == EntryType.PAYMENT_CREDIT.value, amount), else_=0)),
                        0,
                    ),
                    func.coalesce(
                        func.sum(case((kind == EntryType.REFUND_REVERSAL.value, amount), else_=0)),
                        0,
                    ),
                ).where(ledger_entries.c.order_id == order_id)
            )
        ).one()
        return int(row[0]), -int(row[1])

    @staticmethod
    def _of_payment(
        provider: str, payment_id: str, entry_type: EntryType
    ) -> tuple[ColumnElement[bool], ...]:
        return (
            ledger_entries.c.source == provider,
            ledger_entries.c.payment_ref == payment_id,
            ledger_entries.c.entry_type == entry_type.value,
        )
