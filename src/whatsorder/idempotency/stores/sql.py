"""The SQL store (SQLite, PostgreSQL) in transactional mode.

The claim is ``INSERT … ON CONFLICT DO NOTHING`` inside the caller's transaction: on PostgreSQL a
duplicate's insert waits for the first copy's transaction (bounded by ``lock_timeout``) and then
sees its committed record; on SQLite ``BEGIN IMMEDIATE`` makes writers take turns (bounded by
``busy_timeout``). Claim, the handler's writes and completion commit together, so a crash rolls
all of it back and no record is ever left in progress.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from whatsorder.idempotency.errors import (
    RequestInFlight,
    StoreBusy,
    StoreUnavailable,
    TransactionConflict,
)
from whatsorder.idempotency.record import (
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
)
from whatsorder.idempotency.stores.base import Claimed

DEFAULT_TABLE_NAME = "webhook_idempotency"
PG_LOCK_NOT_AVAILABLE = "55P03"
PG_CONNECTION_CLASS = "08"
# SQLite: skip BEGIN IMMEDIATE for a lone statement (a read, or a claim or compare-and-set
# that is atomic on its own): SQLite runs it as a transaction of its own.
AUTOCOMMIT_OPTION = "idempotency_autocommit"
# Operator intervention: the server is shutting down, starting up or recovering (57P01-57P03),
# or ended our session. A retry after it is back succeeds; 57014 (a cancelled query) is not it.
PG_OPERATOR_CLASS = "57"
PG_QUERY_CANCELED = "57014"
PG_TOO_MANY_CONNECTIONS = "53300"
# Races a transaction can lose and win on a second run, because the loser is rolled back whole:
# a deadlock, a serialization failure, and a unique key that a concurrent transaction committed
# first (the rerun sees its row). On SQLite writers take turns, so none of these is a race there.
PG_RERUNNABLE = {
    "40P01": "The transaction deadlocked with another one.",
    "40001": "The transaction could not be serialized with another one.",
    "23505": "A concurrent transaction took the same unique key first.",
}
# What a request that spent its whole wait on the pool still gets for row locks (ms).
MIN_LOCK_WAIT_MS = 500


def idempotency_table(
    metadata: MetaData, name: str = DEFAULT_TABLE_NAME, extra_columns: Sequence[Column[Any]] = ()
) -> Table:
    """The records' table. ``extra_columns`` lets an application note its own ids on a record."""
    return Table(
        name,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("webhook_type", String(64), nullable=False),
        Column("idempotency_key", String(255), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("epoch", Integer, nullable=False),
        Column("locked_until", DateTime(timezone=True)),
        Column("request_body", Text),
        Column("response_status", Integer),
        Column("response_body", LargeBinary),
        Column("response_headers", Text),
        Column("source_ip", String(45)),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("completed_at", DateTime(timezone=True)),
        Column("expires_at", DateTime(timezone=True)),
        *extra_columns,
        UniqueConstraint("webhook_type", "idempotency_key", name=f"uq_{name}_scope_key"),
        Index(f"ix_{name}_expires_at", "expires_at"),
    )


def async_url(url: str) -> str:
    """``sqlite:///…`` and ``postgresql://…`` with the asyncio drivers this package uses."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    drivers = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
    if backend not in drivers:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")
    return parsed.set(drivername=f"{backend}+{drivers[backend]}").render_as_string(
        hide_password=False
    )


def sql_engine(
    url: str,
    *,
    busy_timeout: timedelta = timedelta(seconds=5),
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
) -> AsyncEngine:
    """An engine fit for claims: WAL, ``busy_timeout`` and ``BEGIN IMMEDIATE`` on SQLite."""
    full_url = async_url(url)
    if make_url(full_url).get_backend_name() == "sqlite":
        # The pool's size counts on SQLite too: each aiosqlite connection is a thread, and 15
        # of them contending for the GIL cut replays' throughput by a fifth against 5 (bench).
        engine = create_async_engine(
            full_url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
        )
        _make_sqlite_transactions_immediate(engine, busy_timeout)
        return engine
    return create_async_engine(
        full_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
    )


def _make_sqlite_transactions_immediate(engine: AsyncEngine, busy_timeout: timedelta) -> None:
    # pysqlite begins transactions lazily and never as IMMEDIATE; a deferred transaction that
    # reads and then writes can fail with "database is locked" without waiting. So the driver's
    # own transaction handling is switched off and every transaction begins IMMEDIATE
    # (the recipe of SQLAlchemy's SQLite dialect documentation).
    timeout_ms = int(busy_timeout.total_seconds() * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(AUTOCOMMIT_OPTION):
            return  # a lone statement: SQLite runs it as a transaction of its own
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class SqlTransaction:
    """The store's steps on one open connection; the handler gets the connection as context."""

    def __init__(self, connection: AsyncConnection, table: Table) -> None:
        self._connection = connection
        self._table = table
        self._dialect = connection.dialect.name

    @property
    def context(self) -> AsyncConnection:
        return self._connection

    async def insert_claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta
    ) -> bool:
        values = {
            "webhook_type": request.scope,
            "idempotency_key": request.key,
            "fingerprint": request.fingerprint,
            "status": Status.IN_PROGRESS.value,
            "epoch": 1,
            "locked_until": now + lease,
            "request_body": request.request_body,
            "source_ip": request.source_ip,
            "created_at": now,
        }
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = (
            insert(self._table)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["webhook_type", "idempotency_key"])
        )
        try:
            result = await self._connection.execute(statement)
        except sa_exc.DBAPIError as error:
            if sqlstate(error) == PG_LOCK_NOT_AVAILABLE:
                raise RequestInFlight(
                    "Another request with this idempotency key is still being processed.",
                    retry_after=1,
                ) from error
            raise
        return result.rowcount == 1

    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        table = self._table
        statement = select(table).where(
            table.c.webhook_type == scope, table.c.idempotency_key == key
        )
        row = (await self._connection.execute(statement)).mappings().first()
        if row is None:
            return None
        response = None
        if row["response_status"] is not None:
            headers = tuple(
                (str(name), str(value))
                for name, value in json.loads(row["response_headers"] or "[]")
            )
            response = StoredResponse(
                status=row["response_status"],
                body=bytes(row["response_body"] or b""),
                headers=headers,
            )
        return IdempotencyRecord(
            scope=row["webhook_type"],
            key=row["idempotency_key"],
            fingerprint=row["fingerprint"],
            status=Status(row["status"]),
            epoch=row["epoch"],
            locked_until=row["locked_until"],
            expires_at=row["expires_at"],
            response=response,
        )

    async def take_over(
        self, record: IdempotencyRecord, request: IdempotentRequest, now: datetime, lease: timedelta
    ) -> int | None:
        table = self._table
        new_epoch = record.epoch + 1
        statement = (
            update(table)
            .where(
                table.c.webhook_type == record.scope,
                table.c.idempotency_key == record.key,
                table.c.epoch == record.epoch,  # fencing: only one take-over per epoch wins
            )
            .values(
                fingerprint=request.fingerprint,
                status=Status.IN_PROGRESS.value,
                epoch=new_epoch,
                locked_until=now + lease,
                request_body=request.request_body,
                source_ip=request.source_ip,
                response_status=None,
                response_body=None,
                response_headers=None,
                created_at=now,
                completed_at=None,
                expires_at=None,
            )
        )
        result = await self._connection.execute(statement)
        return new_epoch if result.rowcount == 1 else None

    async def complete(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        annotations: Mapping[str, object],
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        table = self._table
        extra = {name: value for name, value in annotations.items() if name in table.c}
        statement = (
            update(table)
            .where(
                table.c.webhook_type == request.scope,
                table.c.idempotency_key == request.key,
                table.c.epoch == epoch,
                table.c.status == Status.IN_PROGRESS.value,
                table.c.locked_until.is_not(None),
            )
            .values(
                status=Status.COMPLETED.value,
                locked_until=None,
                response_status=response.status,
                response_body=response.body,
                response_headers=json.dumps([list(pair) for pair in response.headers]),
                completed_at=now,
                expires_at=now + ttl,
                **extra,
            )
        )
        result = await self._connection.execute(statement)
        return result.rowcount == 1


class SqlStore:
    """Idempotency records in a SQL table.

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
    ) -> None:
        self.engine = engine
        self.table = table
        self.kind = engine.dialect.name
        self._lock_timeout_ms = max(1, int(in_flight_wait.total_seconds() * 1000))
        self._table_ready = not create_table
        self._table_lock = asyncio.Lock()

    async def _ensure_table(self) -> None:
        if self._table_ready:
            return
        async with self._table_lock:
            if not self._table_ready:
                try:
                    async with self._transaction() as transaction:
                        await transaction.context.run_sync(self.table.create, checkfirst=True)
                except sa_exc.DBAPIError:
                    # Another process created it between our check and our CREATE (PostgreSQL's
                    # IF NOT EXISTS is not race-safe); the second look must find it.
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
            async with self._lone_statement() as connection:
                if await SqlTransaction(connection, self.table).insert_claim(request, now, lease):
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
        raise StoreBusy("The idempotency key is heavily contended; retry.", retry_after=1)

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        await self._ensure_table()
        return await self._peek(scope, key)

    @asynccontextmanager
    async def read_then_transaction(
        self, scope: str, key: str
    ) -> AsyncIterator[IdempotencyRecord | SqlTransaction]:
        """The record if it is completed, read in autocommit; else a transaction. One checkout.

        A replay costs one statement (plus PostgreSQL's pre-ping) and, on SQLite, never waits
        for the write lock. Anything else gets a transaction on the same connection, so a new
        key waits for the pool once, and that wait comes out of its lock wait.
        """
        await self._ensure_table()
        asked = time.monotonic()
        with _store_errors():
            async with self.engine.connect() as connection:
                # The level the engine gives its connections, if it sets one: restored below.
                prior = self.engine.get_execution_options().get("isolation_level")
                await connection.execution_options(**self._autocommit)
                found = await SqlTransaction(connection, self.table).load(scope, key)
                if found is not None and found.status is Status.COMPLETED:
                    yield found
                    return
                # Ends SQLAlchemy's own block around the read (in autocommit the driver sends
                # nothing), so that the connection can begin a real transaction.
                await connection.rollback()
                await connection.execution_options(**self._transactional(connection, prior))
                async with connection.begin():
                    if self.kind == "postgresql":
                        await connection.exec_driver_sql(
                            f"SET LOCAL lock_timeout = {self._lock_wait_left(asked)}"
                        )
                    yield SqlTransaction(connection, self.table)

    @property
    def _autocommit(self) -> dict[str, Any]:
        if self.kind == "postgresql":
            return {"isolation_level": "AUTOCOMMIT"}
        return {AUTOCOMMIT_OPTION: True}

    def _transactional(self, connection: AsyncConnection, prior: str | None) -> dict[str, Any]:
        if self.kind == "postgresql":
            default = connection.sync_connection.default_isolation_level  # type: ignore[union-attr]
            return {"isolation_level": prior or default}
        return {AUTOCOMMIT_OPTION: False}

    async def _peek(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The record as last committed, read by one statement in autocommit."""
        with _store_errors():
            async with self.engine.connect() as connection:
                await connection.execution_options(**self._autocommit)
                return await SqlTransaction(connection, self.table).load(scope, key)

    async def renew(self, scope: str, key: str, epoch: int, locked_until: datetime) -> bool:
        async with self._lone_statement() as connection:
            result = await connection.execute(
                update(self.table)
                .where(*self._holder(scope, key, epoch))
                .values(locked_until=locked_until)
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
        async with self._lone_statement() as connection:
            return await SqlTransaction(connection, self.table).complete(
                request, epoch, response, {}, now, ttl
            )

    async def release(self, scope: str, key: str, epoch: int) -> bool:
        # The lease ends now but the row stays: the next claim takes it over with a higher
        # epoch, so the released holder stays fenced out.
        async with self._lone_statement() as connection:
            result = await connection.execute(
                update(self.table).where(*self._holder(scope, key, epoch)).values(locked_until=None)
            )
        return result.rowcount == 1

    @asynccontextmanager
    async def _lone_statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement, committed by itself (autocommit).

        A new key's claim (``INSERT … ON CONFLICT DO NOTHING``) and the holder's steps (renew,
        complete, release: compare-and-set UPDATEs whose WHERE is the fence) are each atomic on
        their own: no BEGIN, lock_timeout or COMMIT around them (three round trips fewer on
        PostgreSQL). The row a holder updates is its own: only a take-over or a cleanup batch,
        both short, ever lock it, so no lock_timeout is needed.
        """
        await self._ensure_table()
        with _store_errors():
            async with self.engine.connect() as connection:
                await connection.execution_options(**self._autocommit)
                yield connection

    async def close(self) -> None:
        await self.engine.dispose()

    def _lock_wait_left(self, asked: float) -> int:
        """The wait (ms) not yet spent getting a pooled connection: in a storm the two waits
        would otherwise add up past the provider's timeout."""
        spent = int((time.monotonic() - asked) * 1000)
        floor = min(MIN_LOCK_WAIT_MS, self._lock_timeout_ms)
        return max(floor, self._lock_timeout_ms - spent)

    def _holder(self, scope: str, key: str, epoch: int) -> tuple[Any, ...]:
        table = self.table
        return (
            table.c.webhook_type == scope,
            table.c.idempotency_key == key,
            table.c.epoch == epoch,
            table.c.status == Status.IN_PROGRESS.value,
            table.c.locked_until.is_not(None),  # not released
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTransaction]:
        await self._ensure_table()
        async with self._transaction() as transaction:
            yield transaction

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqlTransaction]:
        asked = time.monotonic()
        with _store_errors():
            async with self.engine.connect() as connection, connection.begin():
                if self.kind == "postgresql":
                    # Bounds how long a duplicate waits on the first copy's claim (DESIGN §7).
                    await connection.exec_driver_sql(
                        f"SET LOCAL lock_timeout = {self._lock_wait_left(asked)}"
                    )
                yield SqlTransaction(connection, self.table)


@contextmanager
def _store_errors() -> Iterator[None]:
    """The database's failures as the engine's outcomes: busy (503), unavailable (503)."""
    try:
        yield
    except sa_exc.TimeoutError as error:  # the connection pool stayed empty
        raise StoreBusy("No database connection was free in time.", retry_after=2) from error
    except sa_exc.DBAPIError as error:
        raise _classify(error) from error
    except OSError as error:  # refused or unreachable before the driver could say more
        raise StoreUnavailable("The database cannot be reached.") from error


def _classify(error: sa_exc.DBAPIError) -> Exception:
    """Turn the database's way of saying "not now" into outcomes; anything else stays itself."""
    code = sqlstate(error) or ""
    if code == PG_LOCK_NOT_AVAILABLE:
        return StoreBusy("A database lock was not granted in time.", retry_after=1)
    if code in PG_RERUNNABLE:
        return TransactionConflict(PG_RERUNNABLE[code])
    if code == PG_TOO_MANY_CONNECTIONS:
        return StoreBusy("The database has no connection free.", retry_after=2)
    if code.startswith(PG_OPERATOR_CLASS) and code != PG_QUERY_CANCELED:
        return StoreUnavailable("The database is shutting down or starting up.")
    if error.connection_invalidated or code.startswith(PG_CONNECTION_CLASS):
        return StoreUnavailable("The database connection was lost.")
    message = str(error.orig).lower()
    if "database is locked" in message or "database is busy" in message:
        return StoreBusy("The database was busy with other writes.", retry_after=1)
    if isinstance(error, sa_exc.OperationalError) and (
        "connect" in message or "refused" in message
    ):
        return StoreUnavailable("The database cannot be reached.")
    return error


def sqlstate(error: sa_exc.DBAPIError) -> str | None:
    """The SQLSTATE of a PostgreSQL error, whichever driver raised it."""
    original: Any = error.orig
    for candidate in (original, getattr(original, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None
