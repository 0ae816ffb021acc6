"""The SQL store (SQLite, PostgreSQL): transactional mode, and lease mode for a table apart.

The claim is ``INSERT … ON CONFLICT DO NOTHING`` inside the caller's transaction: on PostgreSQL a
duplicate's insert waits for the first copy's transaction (bounded by ``lock_timeout``) and then
sees its committed record; on SQLite ``BEGIN IMMEDIATE`` makes writers take turns (bounded by
``busy_timeout``). Claim, the handler's writes and completion commit together, so a crash rolls
all of it back and no record is ever left in progress.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from sqlalchemy import Table, case, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder_idempotency.errors import StoreBusy, TransactionConflict
from whatsorder_idempotency.record import (
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
)
from whatsorder_idempotency.stores.base import Claimed
from whatsorder_idempotency.stores.sql.database import (
    autocommit_options,
    lock_wait_left,
    set_lock_timeout,
    transactional_options,
)
from whatsorder_idempotency.stores.sql.driver_pool import DriverPool
from whatsorder_idempotency.stores.sql.errors import (
    RetryOnFreshConnection,
    store_errors,
)
from whatsorder_idempotency.stores.sql.lone import LoneStatements
from whatsorder_idempotency.stores.sql.reads import RecordReads
from whatsorder_idempotency.stores.sql.schema import is_held
from whatsorder_idempotency.stores.sql.shared import SharedTransaction
from whatsorder_idempotency.stores.sql.transaction import SqlTransaction
from whatsorder_idempotency.stores.sql.wakeups import Announcer, changed
from whatsorder_idempotency.wakeups import Wakeups


class SqlStore:
    """Idempotency records in a SQL table.

    ``own_pool``: on PostgreSQL (asyncpg), statements that run alone take connections of the
    store's own pool (driver_pool.py), opened from the engine's URL. An engine that connects
    with ``connect_args`` the URL does not carry (``server_settings``, an SSL context) should
    put them in the URL, or pass ``own_pool=False`` to keep everything on its pool.

    Transactional mode (``transaction()``) shares the application's database and transaction;
    lease mode (``claim`` … ``release``) serves applications whose data lives elsewhere, each
    step one compare-and-set statement in autocommit (a take-over: a short transaction).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        *,
        in_flight_wait: timedelta = timedelta(seconds=5),
        create_table: bool = False,
        own_pool: bool = True,
    ) -> None:
        self.engine = engine
        self.table = table
        self.kind = engine.dialect.name
        self.in_flight_wait = in_flight_wait  # how long a duplicate waits for the first copy
        self._lock_timeout_ms = max(1, int(in_flight_wait.total_seconds() * 1000))
        self._table_ready = not create_table
        self._table_lock = asyncio.Lock()
        # Lease mode on PostgreSQL (asyncpg): complete and release wake the waits of other
        # processes. SQLite has no NOTIFY; one machine's waits poll (docs/idempotency.md).
        notifies = self.kind == "postgresql" and engine.dialect.driver == "asyncpg"
        self._announcer = Announcer(engine, table) if notifies else None
        self.wakeups: Wakeups | None = None if self._announcer is None else self._announcer.wakeups
        # Statements that run alone take asyncpg's connections of their own (driver_pool.py).
        self._driver_pool = DriverPool.of(engine, engine.dispose) if own_pool else None
        # Replays are read by the driver itself (reads.py): on a SQLite file, apart from the pool.
        self._reads = RecordReads(
            engine, table, busy_timeout_ms=self._lock_timeout_ms, driver_pool=self._driver_pool
        )
        # …and so are a new key's claim and its completion (lone.py).
        self._lone = LoneStatements(
            engine, table, self._lone_statement, self._lock_timeout_ms, self._driver_pool
        )

    async def _ensure_table(self) -> None:
        if self._table_ready:
            return
        async with self._table_lock:
            if not self._table_ready:
                try:
                    async with self._transaction() as transaction:
                        await transaction.context.run_sync(self.table.create, checkfirst=True)
                except (sa_exc.DBAPIError, TransactionConflict):
                    # Another process created it between our check and our CREATE (PostgreSQL's
                    # IF NOT EXISTS is not race-safe: its catalogue's unique key says so, which
                    # ``store_errors`` calls a conflict); the second look must find it.
                    async with self._transaction() as transaction:
                        await transaction.context.run_sync(self.table.create, checkfirst=True)
                self._table_ready = True

    async def claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta, ttl: timedelta
    ) -> Claimed | IdempotencyRecord:
        await self._ensure_table()
        # A replay (or a duplicate in flight) is answered by one SELECT outside any transaction:
        # no BEGIN, lock_timeout, INSERT or COMMIT, and no SQLite write lock. Only a key that is
        # absent or can be taken over goes on to the atomic claim below.
        found = await self._peek(request.scope, request.key)
        if found is not None and not found.can_be_taken_over(now):
            return found
        if found is None:
            # A new key: the INSERT … ON CONFLICT DO NOTHING is atomic on its own. It can only
            # wait on another lease claim's insert, itself one statement, so it needs no
            # lock_timeout; a conflict (a duplicate won the race) goes on to the transaction.
            with store_errors():
                if await self._lone.insert_claim(request, now, lease):
                    return Claimed(epoch=1, takeover=False)
        for _ in range(3):
            async with self.transaction() as transaction:
                if await transaction.insert_claim(request, now, lease):
                    return Claimed(epoch=1, takeover=False)
                record = await transaction.load(request.scope, request.key)
                if record is None:
                    continue
                if not record.can_be_taken_over(now):
                    return record
                epoch = await transaction.take_over(record, request, now, lease)
                if epoch is not None:
                    return Claimed(epoch=epoch, takeover=True)
        raise StoreBusy("The idempotency key is heavily contended; retry.")

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        await self._ensure_table()
        return await self._peek(scope, key)

    @asynccontextmanager
    async def read_then_transaction(
        self, scope: str, key: str, *, read: bool = True
    ) -> AsyncIterator[IdempotencyRecord | SqlTransaction]:
        """The record if it is completed, read in autocommit; else a transaction.

        A replay costs one statement and, on SQLite, never waits for the write lock. Anything
        else gets a transaction: on PostgreSQL with the store's own pool, the read was on that
        pool and the transaction checks out SQLAlchemy's; otherwise on the read's connection,
        so a new key waits for the pool once. Either way the wait comes out of its lock wait.
        The transaction gains two statements, the claim and the completion: on PostgreSQL its
        lock_timeout rides on the claim. ``read=False``: the caller has just read the key and
        found nothing (front_reads.py), so the transaction begins as after a miss.
        """
        await self._ensure_table()
        asked = time.monotonic()
        shares_no_connection = self._reads.apart_from_the_pool or self._driver_pool is not None
        if shares_no_connection or not read:
            found = await self._peek(scope, key) if read else None
            if found is not None and found.status is Status.COMPLETED:
                yield found
            elif self._driver_pool is None:  # a SQLite file, or no pool of its own: begin anew
                async with self._transaction() as transaction:
                    yield transaction
            else:  # the read (if any) on the store's own pool (driver_pool.py)
                with store_errors():
                    async with self.engine.connect() as connection, connection.begin():
                        timeout_ms = lock_wait_left(asked, self._lock_timeout_ms)
                        yield SqlTransaction(connection, self.table, lock_timeout_ms=timeout_ms)
            return
        with store_errors():
            async with self._reads.on_first_use(scope, key) as (connection, found):
                if found is not None and found.status is Status.COMPLETED:
                    yield found
                    return
                # The level the engine gives its connections, if it sets one: restored below.
                prior = self.engine.get_execution_options().get("isolation_level")
                # Ends SQLAlchemy's own block around the read (in autocommit the driver sends
                # nothing), so that the connection can begin a real transaction.
                await connection.rollback()
                await connection.execution_options(**transactional_options(connection, prior))
                async with connection.begin():
                    yield SqlTransaction(
                        connection,
                        self.table,
                        lock_timeout_ms=lock_wait_left(asked, self._lock_timeout_ms),
                    )

    async def _peek(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The record as last committed, read by one statement in autocommit."""
        with store_errors():
            return await self._reads.peek(scope, key)

    async def renew(self, scope: str, key: str, epoch: int, locked_until: datetime) -> bool:
        # Only ever later: a renewal that lands after a later one (the heartbeat gave up on it)
        # leaves the lease as it is.
        current = self.table.c.locked_until
        async with self._lone_statement() as connection:
            result = await connection.execute(
                update(self.table)
                .where(*is_held(self.table, scope, key, epoch))
                .values(locked_until=case((current < locked_until, locked_until), else_=current))
            )
        return result.rowcount == 1

    async def complete(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        said = None if self._announcer is None else self._announcer.of(request.scope, request.key)
        await self._ensure_table()
        with store_errors():
            return await self._lone.complete(request, epoch, response, now, ttl, said)

    async def release(self, scope: str, key: str, epoch: int) -> bool:
        # The lease ends now but the row stays: the next claim takes it over with a higher
        # epoch, so the released holder stays fenced out. Waiters elsewhere are woken to claim.
        statement = (
            update(self.table)
            .where(*is_held(self.table, scope, key, epoch))
            .values(locked_until=None)
        )
        said = None if self._announcer is None else self._announcer.of(scope, key)
        async with self._lone_statement() as connection:
            return await changed(connection, statement, self.table, said)

    @asynccontextmanager
    async def _lone_statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement, committed by itself (autocommit).

        A new key's claim and the holder's steps (renew, complete, release: compare-and-set
        UPDATEs whose WHERE is the fence) are atomic alone: no BEGIN, lock_timeout or COMMIT.
        Not retried on a dead connection, unlike reads: once sent, whether it ran is unknown,
        and a claim that ran would find its own row on a retry and wait on it as on a
        duplicate's. So that is ``StoreUnavailable`` (503); a claim that did run is taken over
        once its unrenewed lease ends. (Dead pooled connections are replaced at checkout.)
        """
        await self._ensure_table()
        with store_errors():
            async with self.engine.connect() as connection:
                await connection.execution_options(**autocommit_options(self.kind))
                yield connection

    async def share_transaction(self) -> SharedTransaction:
        """A transaction for a lease holder's handler: its writes commit with the answer."""
        await self._ensure_table()
        return await SharedTransaction.begin(self.engine, self.table, self._announcer)

    async def close(self) -> None:
        """Close the store's connections and the engine's."""
        await self.close_own_connections()
        await self.engine.dispose()

    async def close_own_connections(self) -> None:
        """Close the store's own pool, reading threads and wake-ups' listener, not the engine."""
        if self.wakeups is not None:
            await self.wakeups.close()
        await self._reads.close()
        await asyncio.to_thread(self._lone.close)
        if self._driver_pool is not None:
            await self._driver_pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTransaction]:
        await self._ensure_table()
        async with self._transaction() as transaction:
            yield transaction

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqlTransaction]:
        asked = time.monotonic()
        with store_errors():
            for attempt in (1, 2):
                try:
                    async with self.engine.connect() as connection, connection.begin():
                        if self.kind == "postgresql":
                            await set_lock_timeout(
                                connection, asked, self._lock_timeout_ms, attempt
                            )
                        yield SqlTransaction(connection, self.table)
                        return
                except RetryOnFreshConnection:
                    continue
            raise AssertionError("unreachable")  # the second attempt returned or raised
