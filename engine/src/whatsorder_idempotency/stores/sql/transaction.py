"""The SQL store's steps on one open connection, inside the caller's transaction or alone."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, func, literal, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency.errors import RequestInFlight
from whatsorder_idempotency.record import (
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
)
from whatsorder_idempotency.stores.sql.errors import PG_LOCK_NOT_AVAILABLE, sqlstate
from whatsorder_idempotency.stores.sql.schema import (
    KEY_COLUMN,
    SCOPE_COLUMN,
    can_be_taken_over,
    claimed_row,
    completed_values,
    is_held,
    is_key,
    record_of,
)
from whatsorder_idempotency.stores.sql.wakeups import Announcement, changed


class SqlTransaction:
    """The store's steps on one open connection; the handler gets the connection as context."""

    def __init__(
        self, connection: AsyncConnection, table: Table, *, lock_timeout_ms: int | None = None
    ) -> None:
        """``lock_timeout_ms``: PostgreSQL's lock_timeout for the rest of the transaction, set
        by the claim INSERT itself (see ``insert_claim``) instead of a ``SET LOCAL`` of its own."""
        self._connection = connection
        self._table = table
        self._dialect = connection.dialect.name
        self._lock_timeout_ms = lock_timeout_ms if self._dialect == "postgresql" else None

    @property
    def context(self) -> AsyncConnection:
        return self._connection

    async def insert_claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta
    ) -> bool:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        row = claimed_row(request, now, lease)
        if self._lock_timeout_ms is None:
            statement = insert(self._table).values(**row)
        else:
            statement = insert(self._table).from_select(
                list(row), self._row_setting_lock_timeout(row)
            )
        statement = statement.on_conflict_do_nothing(index_elements=[SCOPE_COLUMN, KEY_COLUMN])
        try:
            result = await self._connection.execute(statement)
        except sa_exc.DBAPIError as error:
            if sqlstate(error) == PG_LOCK_NOT_AVAILABLE:  # waited out lock_timeout on the claim
                raise RequestInFlight(
                    "Another request with this idempotency key is still being processed."
                ) from error
            raise
        return result.rowcount == 1

    def _row_setting_lock_timeout(self, row: Mapping[str, object]) -> Select[Any]:
        """``SELECT <row> WHERE set_config('lock_timeout', …, true) IS NOT NULL``.

        ``set_config(…, true)`` is ``SET LOCAL`` as a function: folded into the claim, the
        timeout costs no round trip of its own. The filter is evaluated before the row reaches
        the INSERT, hence before the INSERT can wait on a duplicate's uncommitted claim, so
        that wait is bounded as with ``SET LOCAL``; and, being transaction-local, the setting
        then bounds the handler's statements that follow, as before: in the transaction
        ``SqlStore.read_then_transaction`` opens, the claim is the first statement
        (``IdempotencyEngine._run_in``).
        """
        values = [
            literal(value, self._table.c[name].type).label(name) for name, value in row.items()
        ]
        timeout = func.set_config("lock_timeout", str(self._lock_timeout_ms), True)
        return select(*values).where(timeout.is_not(None))

    async def load(self, scope: str, key: str) -> IdempotencyRecord | None:
        statement = select(self._table).where(*is_key(self._table, scope, key))
        row = (await self._connection.execute(statement)).mappings().first()
        return None if row is None else record_of(row)

    async def take_over(
        self, record: IdempotencyRecord, request: IdempotentRequest, now: datetime, lease: timedelta
    ) -> int | None:
        table = self._table
        new_epoch = record.epoch + 1
        statement = (
            update(table)
            .where(
                *is_key(table, record.scope, record.key),
                table.c.epoch == record.epoch,  # fencing: only one take-over per epoch wins
                # …and only while it can still be taken over: the holder may have completed
                # or renewed since ``record`` was read, without changing the epoch.
                can_be_taken_over(table, now),
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
        *,
        announce: Announcement | None = None,
    ) -> bool:
        """Store the answer for the holder of ``epoch``; with ``announce`` (lease mode on
        PostgreSQL), the same statement wakes the processes waiting for the key."""
        table = self._table
        extra = {name: value for name, value in annotations.items() if name in table.c}
        statement = (
            update(table)
            .where(*is_held(table, request.scope, request.key, epoch))
            .values(**completed_values(response, now, ttl), **extra)
        )
        return await changed(self._connection, statement, table, announce)
