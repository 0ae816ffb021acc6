"""Reading a record as last committed, by the driver itself: a replay's one statement.

A replay is the engine's hot path. Profiled (docs/benchmarks.md, "Where the time goes"), a read
through SQLAlchemy Core spent more time building the statement, looking it up in the
compilation cache and wrapping the result than the driver spent running it, and on SQLite each
statement cost several hops to aiosqlite's thread (cursor, execute, fetch, close, and the
pool's rollback on return). So a read skips both, with SQL written once per store:

- PostgreSQL: the pooled connection's own asyncpg connection runs it (asyncpg prepares it once
  per connection and keeps it). Outside any transaction, so nothing else is sent; the pool
  gets the connection back with nothing to reset.
- A SQLite file: sqlite3 connections of our own, one per thread of a small pool, read it in WAL
  mode beside the writers: one hop to a thread per read. (An in-memory database is private to
  its connection, so there the read goes through the engine's pool like everything else.)

A lease's claim and completion go the same way (lone.py); take-overs, renewals, releases and
everything in a transaction are written with SQLAlchemy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import Table, bindparam, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder_idempotency.record import IdempotencyRecord
from whatsorder_idempotency.stores.sql.database import autocommit_options
from whatsorder_idempotency.stores.sql.driver_pool import DriverPool
from whatsorder_idempotency.stores.sql.errors import (
    RetryOnFreshConnection,
    connection_lost,
    on_the_driver,
)
from whatsorder_idempotency.stores.sql.schema import KEY_COLUMN, SCOPE_COLUMN, record_of
from whatsorder_idempotency.stores.sql.sqlite_file import SqliteFile
from whatsorder_idempotency.stores.sql.transaction import SqlTransaction

# What a decision needs of a record; the request's body, address and creation time stay put.
READ_COLUMNS = (
    SCOPE_COLUMN,
    KEY_COLUMN,
    "fingerprint",
    "status",
    "epoch",
    "locked_until",
    "expires_at",
    "response_status",
    "response_body",
    "response_headers",
)
_SQLITE_TIMES = ("locked_until", "expires_at")


def select_sql(table: Table, dialect: Dialect) -> str:
    """``SELECT <READ_COLUMNS> FROM <table> WHERE scope = … AND key = …`` as ``dialect`` writes
    it, compiled once: its two parameters are the scope, then the key."""
    statement = select(*(table.c[name] for name in READ_COLUMNS)).where(
        table.c[SCOPE_COLUMN] == bindparam("scope"), table.c[KEY_COLUMN] == bindparam("key")
    )
    compiled = statement.compile(dialect=dialect)
    if list(compiled.positiontup or ()) != ["scope", "key"]:
        raise AssertionError(f"{dialect.name}: parameters out of order in {compiled}")
    return str(compiled)


class PooledReads:
    """Reads on a pooled connection: asyncpg's own on PostgreSQL, else SQLAlchemy Core."""

    def __init__(self, engine: AsyncEngine, table: Table) -> None:
        self._table = table
        self._raw = engine.dialect.driver == "asyncpg"
        self.sql = select_sql(table, engine.dialect)

    async def read_on(
        self, connection: AsyncConnection, scope: str, key: str
    ) -> IdempotencyRecord | None:
        """The record as last committed, read on ``connection`` outside any transaction."""
        if not self._raw:
            await connection.execution_options(**autocommit_options(connection.dialect.name))
            return await SqlTransaction(connection, self._table).load(scope, key)
        row = await on_the_driver(connection, "fetchrow", self.sql, scope, key)
        return None if row is None else record_of(row)


class SqliteFileReads:
    """Reads of a SQLite file on sqlite3 connections of our own (sqlite_file.py)."""

    def __init__(self, path: str, table: Table, dialect: Dialect, busy_timeout_ms: int) -> None:
        self._sql = select_sql(table, dialect)
        self.file = SqliteFile(path, busy_timeout_ms, name="idempotency-reads", read_only=True)

    async def read(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The record as last committed: one hop to a reading thread."""
        row = await self.file.fetch_one(self._sql, (scope, key))
        if row is None:
            return None
        found = dict(zip(READ_COLUMNS, row, strict=True))
        for name in _SQLITE_TIMES:  # stored as text by SQLAlchemy's DateTime on SQLite
            if found[name] is not None:
                found[name] = datetime.fromisoformat(found[name])
        return record_of(found)


def sqlite_file_of(engine: AsyncEngine) -> str | None:
    """The file of a SQLite engine, or None (another database, in memory, or a URI)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.query:
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return database


class RecordReads:
    """How a store reads committed records: on a SQLite file apart from the pool, else on a
    pooled connection, which a transaction may then go on using (``on_first_use``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        *,
        busy_timeout_ms: int,
        driver_pool: DriverPool | None = None,
    ) -> None:
        self._engine = engine
        self._pooled = PooledReads(engine, table)
        self._driver_pool = driver_pool
        path = sqlite_file_of(engine)
        self._file = (
            None if path is None else SqliteFileReads(path, table, engine.dialect, busy_timeout_ms)
        )

    @property
    def file_reads(self) -> SqliteFileReads | None:
        """The reads of a SQLite file, when reads are apart from the pool."""
        return self._file

    @property
    def apart_from_the_pool(self) -> bool:
        """Whether reads use connections of their own (a SQLite file)."""
        return self._file is not None

    async def peek(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The record as last committed, read by one statement in autocommit."""
        if self._file is not None:
            return await self._file.read(scope, key)
        if self._driver_pool is not None:
            row = await self._driver_pool.run("fetchrow", self._pooled.sql, scope, key, again=True)
            return None if row is None else record_of(row)
        async with self.on_first_use(scope, key) as (_connection, found):
            return found

    @asynccontextmanager
    async def on_first_use(
        self, scope: str, key: str
    ) -> AsyncIterator[tuple[AsyncConnection, IdempotencyRecord | None]]:
        """A pooled connection and the record as last committed, read on it in autocommit.

        The read is the connection's first use. If the connection turns out dead (the server
        ended it and the driver had not yet noticed, so the checkout did not replace it), the
        read is run once more on a fresh one: a read changes nothing, so running it twice is
        harmless whatever the first attempt reached.
        """
        for attempt in (1, 2):
            try:
                async with self._engine.connect() as connection:
                    try:
                        found = await self._pooled.read_on(connection, scope, key)
                    except sa_exc.DBAPIError as error:
                        if attempt == 1 and connection_lost(error):
                            await connection.invalidate(error)  # never handed out again
                            raise RetryOnFreshConnection from error
                        raise
                    yield connection, found
                    return
            except RetryOnFreshConnection:
                continue
        raise AssertionError("unreachable")  # the second attempt returned or raised

    async def close(self) -> None:
        """Close the reading threads' connections, if any."""
        if self._file is not None:
            await asyncio.to_thread(self._file.file.close)
