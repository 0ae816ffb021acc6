"""A lease holder's claim and completion, each one statement alone, run by the driver itself.

In lease mode (the middleware) a new key costs two statements of the engine's own, each alone
in autocommit: the claim's ``INSERT … ON CONFLICT DO NOTHING`` and the completing compare-and-set
``UPDATE`` (which on PostgreSQL also wakes waiting processes, wakeups.py). Profiled
(docs/benchmarks.md, "Where the time goes"), SQLAlchemy Core spent more of a first request's
time building, caching and wrapping those two than the driver spent running them. So, as
replays are (reads.py), they are compiled once per store by SQLAlchemy, with the dialect's casts
and SQLAlchemy's own conversion of values (a SQLite timestamp is the text SQLAlchemy writes),
and run with positional arguments:

- PostgreSQL: on the pooled connection's own asyncpg connection; no transaction begun, nothing
  for the pool to reset.
- A SQLite file: on sqlite3 connections of our own (sqlite_file.py), one hop to a thread.
- Anything else (SQLite in memory, another driver): through SQLAlchemy, as before.

Only lone statements go this way. A statement inside a transaction stays with SQLAlchemy: its
asyncpg adapter begins the transaction lazily, on the first statement it runs itself, so a
statement sent past it would run outside the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, Table, bindparam, case, func, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import BindParameter

from whatsorder_idempotency.record import IdempotentRequest, StoredResponse
from whatsorder_idempotency.stores.sql.driver_pool import DriverPool
from whatsorder_idempotency.stores.sql.reads import sqlite_file_of
from whatsorder_idempotency.stores.sql.schema import (
    KEY_COLUMN,
    SCOPE_COLUMN,
    claimed_row,
    completed_values,
    is_held,
)
from whatsorder_idempotency.stores.sql.sqlite_file import SqliteFile
from whatsorder_idempotency.stores.sql.transaction import SqlTransaction
from whatsorder_idempotency.stores.sql.wakeups import Announcement

# Parameters are named apart from the columns: SQLAlchemy keeps a column's own name for itself
# in an INSERT's VALUES and an UPDATE's SET.
_NEW = "new_"
# The store's pooled connection for one statement in autocommit.
LoneConnection = Callable[..., AbstractAsyncContextManager[AsyncConnection]]


class _Compiled:
    """One statement as the dialect writes it, and how its named parameters become arguments."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self._order = tuple(compiled.positiontup or ())
        # Values written into the statement (``status = 'in_progress'``) are parameters too.
        binds = {name: bind for name, bind in compiled.binds.items() if name in self._order}
        self._fixed = {name: bind.value for name, bind in binds.items() if not bind.required}
        self._convert = {
            name: convert
            for name, bind in binds.items()
            if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        found = [values[name] if name in values else self._fixed[name] for name in self._order]
        return [
            value if value is None or name not in self._convert else self._convert[name](value)
            for name, value in zip(self._order, found, strict=True)
        ]


class LoneStatements:
    """The claim and the completion, each alone in autocommit."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        connection: LoneConnection,
        busy_timeout_ms: int,
        driver_pool: DriverPool | None,
    ) -> None:
        dialect = engine.dialect
        self._table = table
        self._connection = connection
        # Python-side defaults (an application's extra column) are SQLAlchemy's to compute at
        # each execution: such a table's statements stay with SQLAlchemy.
        own_defaults = any(c.default is not None or c.onupdate is not None for c in table.c)
        self._driver_pool = None if own_defaults else driver_pool
        self._asyncpg = self._driver_pool is not None
        path = None if own_defaults else sqlite_file_of(engine)
        self.file: SqliteFile | None = None
        if path is not None:
            self.file = SqliteFile(
                path, busy_timeout_ms, name="idempotency-writes", read_only=False
            )
        if not (self._asyncpg or self.file is not None):
            return
        insert = postgresql.insert if self._asyncpg else sqlite.insert
        self._claim = _Compiled(
            insert(table)
            .values({name: _new(table, name) for name in _CLAIMED})
            .on_conflict_do_nothing(index_elements=[SCOPE_COLUMN, KEY_COLUMN])
            .inline(),  # no RETURNING of the new row's id
            dialect,
        )
        holder = (
            bindparam("held_scope", type_=String()),
            bindparam("held_key", type_=String()),
            bindparam("held_epoch", type_=Integer()),
        )
        completion = (
            update(table)
            .where(*is_held(table, *holder))
            .values({name: _new(table, name) for name in _COMPLETED})
        )
        self._complete = _Compiled(completion, dialect)
        if self._asyncpg:
            done = completion.returning(table.c[KEY_COLUMN]).cte("done")
            lock = bindparam("lock", type_=postgresql.BIGINT)
            notify = func.pg_notify(bindparam("channel"), bindparam("token"))
            announcing = case((func.pg_try_advisory_xact_lock(lock), null()), else_=notify)
            self._complete_announced = _Compiled(select(announcing).select_from(done), dialect)

    async def insert_claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta
    ) -> bool:
        """Claim a new key for epoch 1; False if a record of it exists."""
        row = _renamed(claimed_row(request, now, lease))
        if self.file is not None:
            return await self.file.execute(self._claim.sql, self._claim.arguments(row)) == 1
        if self._driver_pool is not None:
            status = await self._driver_pool.run(
                "execute", self._claim.sql, *self._claim.arguments(row)
            )
            return str(status).endswith(" 1")  # "INSERT 0 1": one row inserted
        async with self._connection() as connection:
            return await SqlTransaction(connection, self._table).insert_claim(request, now, lease)

    async def complete(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        now: datetime,
        ttl: timedelta,
        said: Announcement | None,
    ) -> bool:
        """Store the answer for the holder of ``epoch``; with ``said``, wake its waiters."""
        values = _renamed(completed_values(response, now, ttl))
        values.update(held_scope=request.scope, held_key=request.key, held_epoch=epoch)
        if self.file is not None:
            return (
                await self.file.execute(self._complete.sql, self._complete.arguments(values)) == 1
            )
        if self._driver_pool is None:
            async with self._connection() as connection:
                return await SqlTransaction(connection, self._table).complete(
                    request, epoch, response, {}, now, ttl, announce=said
                )
        if said is None:
            status = await self._driver_pool.run(
                "execute", self._complete.sql, *self._complete.arguments(values)
            )
            return str(status).endswith(" 1")  # "UPDATE 1"
        values.update(lock=said.lock, channel=said.channel, token=said.token)
        announced = self._complete_announced
        rows = await self._driver_pool.run("fetch", announced.sql, *announced.arguments(values))
        return len(rows) == 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# The columns each statement writes, as the functions that give their values name them.
_CLAIMED = tuple(claimed_row(IdempotentRequest("", "", ""), datetime.min, timedelta()))
_COMPLETED = tuple(completed_values(StoredResponse(200, b""), datetime.min, timedelta()))


def _new(table: Table, column: str) -> BindParameter[Any]:
    return bindparam(_NEW + column, type_=table.c[column].type)


def _renamed(values: Mapping[str, Any]) -> dict[str, Any]:
    return {_NEW + name: value for name, value in values.items()}
