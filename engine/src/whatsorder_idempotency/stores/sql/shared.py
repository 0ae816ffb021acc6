"""A transaction shared by a lease holder's handler and its stored answer (SQL stores).

In lease mode the claim commits first, on its own. A handler that asks for the store's
connection (``whatsorder_idempotency.held``) gets this transaction: its writes and the record's
completion commit together, and the completion is the compare-and-set on the holder's epoch. A
holder that lost its lease (paused, then taken over) fails that compare-and-set and its writes
roll back; a crash before the commit leaves neither, and the key is taken over once the lease
dies (docs/architecture.md §3).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from whatsorder_idempotency.record import IdempotentRequest, StoredResponse
from whatsorder_idempotency.stores.sql.errors import store_errors
from whatsorder_idempotency.stores.sql.transaction import SqlTransaction
from whatsorder_idempotency.stores.sql.wakeups import Announcement, Announcer


class SharedTransaction:
    """One open transaction on a pooled connection; ``connection`` is the handler's."""

    def __init__(
        self,
        connection: AsyncConnection,
        transaction: AsyncTransaction,
        table: Table,
        announcer: Announcer | None = None,
    ):
        self.connection = connection
        self._transaction = transaction
        self._table = table
        self._announcer = announcer
        # SQLite's transactions begin IMMEDIATE: while this one is open nobody else writes, so
        # nobody can take the key over either, and renewing the lease from another connection
        # would only wait on this transaction's own lock.
        self.excludes_other_writers = connection.dialect.name == "sqlite"

    @classmethod
    async def begin(
        cls, engine: AsyncEngine, table: Table, announcer: Announcer | None = None
    ) -> SharedTransaction:
        with store_errors():
            connection = await engine.connect()
            try:
                transaction = await connection.begin()
            except BaseException:
                await connection.close()
                raise
        return cls(connection, transaction, table, announcer)

    async def complete_and_commit(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        """Store the answer if ``epoch`` still holds the key and commit; else roll back.

        False: the holder was fenced out and the handler's writes are undone. A failure of the
        commit itself raises (``StoreUnavailable`` and the like): whether it committed is
        unknown, so no answer may go out; the client's retry replays or runs afresh.
        """
        try:
            if not self._transaction.is_active:
                raise RuntimeError(
                    "The handler committed or rolled back the transaction of "
                    "idempotent_connection(); leave that to the engine, which commits the "
                    "handler's writes together with its stored answer."
                )
            with store_errors():
                # Announced at the commit: duplicates in other processes look at once.
                said = _announcement(self._announcer, request)
                completed = await SqlTransaction(self.connection, self._table).complete(
                    request, epoch, response, {}, now, ttl, announce=said
                )
                if completed:
                    await self._transaction.commit()
                    return True
        finally:
            await self._end()
        return False

    async def roll_back(self) -> None:
        await self._end()

    async def _end(self) -> None:
        """Roll back whatever is still open and give the connection back to the pool."""
        try:
            if self._transaction.is_active:
                with store_errors():
                    await self._transaction.rollback()
        finally:
            await self.connection.close()


def _announcement(announcer: Announcer | None, request: IdempotentRequest) -> Announcement | None:
    return None if announcer is None else announcer.of(request.scope, request.key)
