"""One cleaner at a time on PostgreSQL: a session advisory lock, tried once, never waited for.

The session that holds it runs the batches too (``cleanup.py``), in autocommit with
``synchronous_commit`` off, and is reset or closed before its connection goes back to the pool.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency.stores.sql import SqlStore

log = logging.getLogger("whatsorder_idempotency")


def cleanup_lock_key(table_name: str) -> int:
    """The PostgreSQL advisory-lock key for cleaning ``table_name``: fixed, signed 64-bit."""
    digest = hashlib.sha256(f"idempotency-cleanup:{table_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def one_cleaner(store: SqlStore) -> AsyncIterator[tuple[bool, AsyncConnection | None]]:
    """Whether this run may clean, and (PostgreSQL) the connection that holds the cleanup lock.

    On PostgreSQL the batches run on that connection, each one statement in autocommit: no
    pool checkout, pre-ping, BEGIN or COMMIT round trips per batch.
    """
    if store.kind != "postgresql":
        yield True, None
        return
    key = cleanup_lock_key(store.table.fullname)
    async with store.engine.connect() as connection:
        acquired = bool(await connection.scalar(select(func.pg_try_advisory_lock(key))))
        await connection.commit()  # the lock is the session's: no transaction stays open
        try:
            if acquired:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                # Safe to lose: a batch whose commit had not reached the disk when the server
                # crashed is undone by recovery, its rows still there and still expired, and
                # the next run deletes them again; nothing treats a deletion as a promise. A
                # later durable commit that follows it (a new claim of a deleted key) flushes
                # the WAL up to itself, the deletion's records included, so no crash keeps the
                # claim and loses the deletion. So no batch waits for its WAL to be flushed.
                # The setting is this session's and is reset (or the session closed) before
                # the connection goes back to the pool.
                await connection.exec_driver_sql("SET synchronous_commit = off")
            yield acquired, connection
        finally:
            if acquired:
                await _unlock(connection, key)


async def _unlock(connection: AsyncConnection, key: int) -> None:
    # Ending the session releases the lock too: a session that may still hold it (or that still
    # commits without waiting for the disk) must never go back to the pool, where it would keep
    # every other replica skipping (or serve claims).
    try:
        await connection.exec_driver_sql("RESET synchronous_commit")
        await connection.execute(select(func.pg_advisory_unlock(key)))
        await connection.commit()
    except Exception:
        log.warning("cleanup lock not released; closing its session", exc_info=True)
        await connection.invalidate()
    except BaseException:  # cancelled: close the session, then let the cancellation go on
        await connection.invalidate()
        raise
