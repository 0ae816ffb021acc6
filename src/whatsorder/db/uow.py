"""The unit of work: business rows commit together, or not at all.

Inside a webhook the idempotency engine owns the transaction (claim, business writes and
completion commit as one); a unit of work there is a SAVEPOINT, so a rejected order rolls back
its own writes while the reply is still stored. Outside (CLI, admin) it owns a transaction of
its own. Either way nothing commits unless the service calls ``commit()``.
"""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from whatsorder.db.consent import ConsentRepository
from whatsorder.db.customers import CustomerRepository
from whatsorder.db.dead_letters import DeadLetterRepository
from whatsorder.db.fulfilment import FulfilmentRepository
from whatsorder.db.outbox import OutboxRepository
from whatsorder.db.payment_links import PaymentLinkRepository
from whatsorder.db.payments import PaymentRepository
from whatsorder.db.repository import OrderingRepository


class SqlUnitOfWork:
    """``async with uow: …; await uow.commit()``. Leaving the block without commit rolls back.

    Implements `whatsorder.ordering.ports.UnitOfWork`.
    """

    ordering: OrderingRepository
    payments: PaymentRepository
    outbox: OutboxRepository
    dead_letters: DeadLetterRepository
    fulfilment: FulfilmentRepository
    payment_links: PaymentLinkRepository
    customers: CustomerRepository
    consent: ConsentRepository

    def __init__(self, source: AsyncEngine | AsyncConnection) -> None:
        self._source = source
        self._connection: AsyncConnection | None = None
        self._transaction: AsyncTransaction | None = None

    async def __aenter__(self) -> SqlUnitOfWork:
        if isinstance(self._source, AsyncEngine):
            self._connection = await self._source.connect()
            self._transaction = await self._connection.begin()
        else:
            self._connection = self._source
            self._transaction = await self._source.begin_nested()
        self.ordering = OrderingRepository(self._connection)
        self.payments = PaymentRepository(self._connection)
        self.outbox = OutboxRepository(self._connection)
        self.dead_letters = DeadLetterRepository(self._connection)
        self.fulfilment = FulfilmentRepository(self._connection)
        self.payment_links = PaymentLinkRepository(self._connection)
        self.customers = CustomerRepository(self._connection)
        self.consent = ConsentRepository(self._connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._transaction is not None and self._transaction.is_active:
                await self._transaction.rollback()
        finally:
            if isinstance(self._source, AsyncEngine) and self._connection is not None:
                await self._connection.close()
            self._transaction = None

    async def commit(self) -> None:
        """Make the block's writes part of the enclosing transaction (or commit its own)."""
        assert self._transaction is not None, "commit() outside 'async with uow'"
        await self._transaction.commit()

    @property
    def connection(self) -> AsyncConnection:
        assert self._connection is not None
        return self._connection
