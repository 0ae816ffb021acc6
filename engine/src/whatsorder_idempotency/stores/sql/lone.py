"""A lease holder's claim and completion on PostgreSQL, each run by asyncpg itself.

In lease mode (the middleware) a new key costs two statements of the engine's own, each alone
in autocommit: the claim's ``INSERT … ON CONFLICT DO NOTHING`` and the completing compare-and-set
``UPDATE`` (which also wakes waiting processes, wakeups.py). Profiled (docs/benchmarks.md, "Where
the time goes"), SQLAlchemy Core spent more of a first request's time building, caching and
wrapping those two than asyncpg spent running them. So, as replays do (reads.py), they are
compiled once per store by SQLAlchemy, with the dialect's casts, and run on the pooled
connection's own asyncpg connection with positional arguments: no statement built per call, no
transaction begun, nothing for the pool to reset.

Only lone statements go this way. A statement inside a transaction stays with SQLAlchemy: its
asyncpg adapter begins the transaction lazily, on the first statement it runs itself, so a
statement sent past it would run outside the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, Table, bindparam, case, func, null, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from whatsorder_idempotency.record import IdempotentRequest, StoredResponse
from whatsorder_idempotency.stores.sql.errors import driver_error
from whatsorder_idempotency.stores.sql.schema import (
    KEY_COLUMN,
    SCOPE_COLUMN,
    claimed_row,
    completed_values,
    is_held,
)
from whatsorder_idempotency.stores.sql.transaction import SqlTransaction
from whatsorder_idempotency.stores.sql.wakeups import Announcement

# Parameters are named apart from the columns: SQLAlchemy keeps a column's own name for itself
# in an INSERT's VALUES and an UPDATE's SET.
_NEW = "new_"


class _Compiled:
    """One statement as the dialect writes it, and the order its named parameters go in."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.order = tuple(compiled.positiontup or ())
        # Values written into the statement (``status = 'in_progress'``) are parameters too.
        self._fixed = {
            name: bind.value for name, bind in compiled.binds.items() if not bind.required
        }

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] if name in values else self._fixed[name] for name in self.order]


class LoneStatements:
    """The claim and the completion, each alone in autocommit on a pooled connection."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self._table = table
        self._raw = dialect.name == "postgresql" and dialect.driver == "asyncpg"
        if not self._raw:
            return
        self._claim = _Compiled(
            postgresql.insert(table)
            .values({name: _new(table, name) for name in _CLAIMED})
            .on_conflict_do_nothing(index_elements=[SCOPE_COLUMN, KEY_COLUMN])
            .inline(),  # no RETURNING of the new row's id
            dialect,
        )
        completion = (
            update(table)
            .where(
                *is_held(
                    table,
                    bindparam("held_scope", type_=String()),
                    bindparam("held_key", type_=String()),
                    bindparam("held_epoch", type_=Integer()),
                )
            )
            .values({name: _new(table, name) for name in _COMPLETED})
        )
        self._complete = _Compiled(completion, dialect)
        done = completion.returning(table.c[KEY_COLUMN]).cte("done")
        nobody_waits = func.pg_try_advisory_xact_lock(bindparam("lock", type_=postgresql.BIGINT))
        notify = func.pg_notify(bindparam("channel"), bindparam("token"))
        self._complete_announced = _Compiled(
            select(case((nobody_waits, null()), else_=notify)).select_from(done), dialect
        )

    @property
    def by_the_driver(self) -> bool:
        """Whether the driver runs them, past SQLAlchemy (PostgreSQL with asyncpg)."""
        return self._raw

    async def insert_claim(
        self,
        connection: AsyncConnection,
        request: IdempotentRequest,
        now: datetime,
        lease: timedelta,
    ) -> bool:
        """Claim a new key for epoch 1; False if a record of it exists."""
        if not self._raw:
            return await SqlTransaction(connection, self._table).insert_claim(request, now, lease)
        row = claimed_row(request, now, lease)
        status = await self._run(connection, "execute", self._claim, _renamed(row))
        return str(status).endswith(" 1")  # "INSERT 0 1": one row inserted

    async def complete(
        self,
        connection: AsyncConnection,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        now: datetime,
        ttl: timedelta,
        said: Announcement | None,
    ) -> bool:
        """Store the answer for the holder of ``epoch``; with ``said``, wake its waiters."""
        if not self._raw:
            return await SqlTransaction(connection, self._table).complete(
                request, epoch, response, {}, now, ttl, announce=said
            )
        values = _renamed(completed_values(response, now, ttl))
        values.update(held_scope=request.scope, held_key=request.key, held_epoch=epoch)
        if said is None:
            status = await self._run(connection, "execute", self._complete, values)
            return str(status).endswith(" 1")  # "UPDATE 1"
        values.update(lock=said.lock, channel=said.channel, token=said.token)
        rows = await self._run(connection, "fetch", self._complete_announced, values)
        return len(rows) == 1

    async def _run(
        self,
        connection: AsyncConnection,
        method: str,
        statement: _Compiled,
        values: Mapping[str, Any],
    ) -> Any:
        """Run on the driver's connection; its errors as SQLAlchemy's, a dead one invalidated.

        Not retried on a dead connection: once sent, whether it ran is unknown (store.py).
        """
        raw = (await connection.get_raw_connection()).driver_connection
        try:
            return await getattr(raw, method)(statement.sql, *statement.arguments(values))
        except Exception as error:
            wrapped = driver_error(error, statement.sql)
            if isinstance(wrapped, sa_exc.DBAPIError) and wrapped.connection_invalidated:
                await connection.invalidate(error)  # never handed out again
            raise wrapped from error


# The columns each statement writes, as the functions that give their values name them.
_CLAIMED = tuple(claimed_row(IdempotentRequest("", "", ""), datetime.min, timedelta()))
_COMPLETED = tuple(completed_values(StoredResponse(200, b""), datetime.min, timedelta()))


def _new(table: Table, column: str) -> BindParameter[Any]:
    return bindparam(_NEW + column, type_=table.c[column].type)


def _renamed(values: Mapping[str, Any]) -> dict[str, Any]:
    return {_NEW + name: value for name, value in values.items()}
