"""Cleanup of a SQL store: expired records and long-dead claims go, in short batches.

Each batch is a transaction of its own that deletes at most ``batch_size`` rows, so no statement
holds many locks for long, and a stop request (SIGTERM) honoured between batches leaves whole
batches deleted and the rest untouched. Rows another transaction holds (a request taking over an
expired record) are skipped, never waited for, and the predicate is checked again on delete, so
a record that came back to life in the meantime stays.

On PostgreSQL one replica cleans at a time: a session advisory lock, tried once and never waited
for, on a connection of its own for the whole run. SQLite has one writer at a time and needs none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Table, and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency.record import Status, as_utc
from whatsorder_idempotency.stores.sql import SqlStore

log = logging.getLogger("whatsorder_idempotency")

DEFAULT_BATCH_SIZE = 1000
DEFAULT_STALE_AFTER = timedelta(hours=1)
SKIPPED_DETAIL = "another replica is cleaning"

CleanupOutcome = Literal["completed", "stopped", "skipped"]


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What one cleanup run did (a dry run: what it would have deleted)."""

    rows_deleted: int  # expired records
    stale_removed: int  # in-progress claims whose lease is long dead, or that were released
    batches: int
    seconds: float
    outcome: CleanupOutcome
    detail: str | None = None


def cleanup_lock_key(table_name: str) -> int:
    """The PostgreSQL advisory-lock key for cleaning ``table_name``: fixed, signed 64-bit."""
    digest = hashlib.sha256(f"idempotency-cleanup:{table_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def expired_records(table: Table, now: datetime) -> ColumnElement[bool]:
    """Completed records whose time to live is over."""
    return and_(table.c.status == Status.COMPLETED.value, table.c.expires_at <= now)


def stale_claims(table: Table, cutoff: datetime) -> ColumnElement[bool]:
    """In-progress claims nobody holds since before ``cutoff``: lease long over, or released.

    A live lease is never stale, however old the claim: its holder renews it.
    """
    return and_(
        table.c.status == Status.IN_PROGRESS.value,
        or_(
            table.c.locked_until < cutoff,
            and_(table.c.locked_until.is_(None), table.c.created_at < cutoff),
        ),
    )


async def delete_expired(
    store: SqlStore,
    *,
    now: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    dry_run: bool = False,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> CleanupReport:
    """Delete expired records, then stale claims, ``batch_size`` rows per transaction.

    ``stop`` is checked before each batch: once set, the run ends after the batch in progress
    with outcome ``stopped``. ``on_batch`` hears how many rows each batch deleted. A dry run
    only counts. On PostgreSQL, while another run holds the cleanup lock this returns at once
    with outcome ``skipped``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = time.monotonic()
    now = as_utc(now)
    table = store.table
    # Expired records oldest first: a range scan of the expires_at index that reads only the
    # batch, however large the table or however few rows have expired. Stale claims are rare
    # (in transactional mode a crash rolls its claim back) and go in id order.
    phases = (
        (expired_records(table, now), table.c.expires_at),
        (stale_claims(table, now - stale_after), table.c.id),
    )

    if dry_run:
        async with store.transaction() as transaction:
            counts = [await _count(transaction.context, table, phase) for phase, _ in phases]
        report = CleanupReport(
            counts[0], counts[1], 0, time.monotonic() - started, "completed", "dry run"
        )
        log.info("Idempotency cleanup dry run", extra=_fields(report))
        return report

    async with _one_cleaner(store) as acquired:
        if not acquired:
            report = CleanupReport(0, 0, 0, time.monotonic() - started, "skipped", SKIPPED_DETAIL)
            log.info("cleanup skipped: another replica is cleaning", extra=_fields(report))
            return report
        deleted = [0, 0]
        batches = 0
        stopped = False
        for index, (phase, order) in enumerate(phases):
            while not stopped:
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                count = await _delete_batch(store, phase, order, batch_size)
                if count:
                    batches += 1
                    deleted[index] += count
                    if on_batch is not None:
                        on_batch(count)
                if count < batch_size:  # nothing more matches (or only rows held elsewhere)
                    break

    seconds = time.monotonic() - started
    if stopped:
        report = CleanupReport(
            deleted[0], deleted[1], batches, seconds, "stopped", f"stopped after {batches} batches"
        )
        log.info("Idempotency cleanup stopped", extra=_fields(report))
    else:
        report = CleanupReport(deleted[0], deleted[1], batches, seconds, "completed")
        log.info("Idempotency cleanup completed", extra=_fields(report))
    return report


async def _count(connection: AsyncConnection, table: Table, condition: ColumnElement[bool]) -> int:
    return int(
        await connection.scalar(select(func.count()).select_from(table).where(condition)) or 0
    )


async def _delete_batch(
    store: SqlStore, condition: ColumnElement[bool], order: ColumnElement[Any], batch_size: int
) -> int:
    table = store.table
    # Rows a request in flight holds are skipped, not waited for (SQLite has no row locks and
    # leaves the clause out). The condition is checked again on each row deleted: a record
    # taken over by a retry since the batch was chosen stays.
    batch = (
        select(table.c.id)
        .where(condition)
        .order_by(order)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    if store.kind == "postgresql":
        # Chosen once, in a materialized CTE: PostgreSQL may run a LIMIT subquery under IN
        # once per outer row, each run skipping the rows the last one locked, and the
        # "batch" becomes the whole backlog. (SQLite runs it once, and reports no row count
        # for a statement that starts WITH.)
        chosen = batch.cte("cleanup_batch").prefix_with("MATERIALIZED")
        batch = select(chosen.c.id)
    async with store.transaction() as transaction:
        result = await transaction.context.execute(
            delete(table).where(table.c.id.in_(batch), condition)
        )
    return int(result.rowcount)


@asynccontextmanager
async def _one_cleaner(store: SqlStore) -> AsyncIterator[bool]:
    """Whether this run may clean: on PostgreSQL, whether it got the cleanup lock."""
    if store.kind != "postgresql":
        yield True
        return
    key = cleanup_lock_key(store.table.fullname)
    async with store.engine.connect() as connection:
        acquired = bool(await connection.scalar(select(func.pg_try_advisory_lock(key))))
        await connection.commit()  # the lock is the session's: no transaction stays open
        try:
            yield acquired
        finally:
            if acquired:
                await _unlock(connection, key)


async def _unlock(connection: AsyncConnection, key: int) -> None:
    # Ending the session releases the lock too: a session that may still hold it must never
    # go back to the pool, where it would keep every other replica skipping.
    try:
        await connection.execute(select(func.pg_advisory_unlock(key)))
        await connection.commit()
    except Exception:
        log.warning("cleanup lock not released; closing its session", exc_info=True)
        await connection.invalidate()
    except BaseException:  # cancelled: close the session, then let the cancellation go on
        await connection.invalidate()
        raise


def _fields(report: CleanupReport) -> dict[str, Any]:
    return {
        "outcome": report.outcome,
        "rows_deleted": report.rows_deleted,
        "stale_removed": report.stale_removed,
        "batches": report.batches,
        "seconds": round(report.seconds, 3),
    }
