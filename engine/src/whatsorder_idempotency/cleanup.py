"""Cleanup of a SQL store: expired records and long-dead claims go, in short batches.

Each batch is a transaction of its own that deletes at most ``batch_size`` rows, so no statement
holds many locks for long, and a stop request (SIGTERM) honoured between batches leaves whole
batches deleted and the rest untouched. Rows another transaction holds (a request taking over an
expired record) are skipped, never waited for, and the predicate is checked again on delete, so
a record that came back to life in the meantime stays.

After each batch the run pauses for as long as the batch took (``pause``): the requests that
arrive meanwhile get the CPU, the disk and, on SQLite, the write lock, which a run in a tight
loop would hold almost all the time (SQLite's busy handler sleeps between its tries, so a
waiting writer seldom hits the moment between two batches).

On PostgreSQL one replica cleans at a time: a session advisory lock, tried once and never waited
for, on a connection of its own for the whole run, which also runs the batches. Each batch
starts where the last one ended (``expires_at >= the last one deleted``): a deleted row's index
entry stays until VACUUM, and a batch started from the lowest key would walk over every entry
the run had already deleted, ever more of them. SQLite removes index entries at once, has one
writer at a time and needs neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    Column,
    ColumnElement,
    Table,
    and_,
    delete,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency.cleanup_checkpoints import checkpoint_after_batch
from whatsorder_idempotency.cleanup_lock import cleanup_lock_key as cleanup_lock_key
from whatsorder_idempotency.cleanup_lock import one_cleaner
from whatsorder_idempotency.record import Status, as_utc
from whatsorder_idempotency.stores.sql import SqlStore
from whatsorder_idempotency.stores.sql.errors import store_errors

log = logging.getLogger("whatsorder_idempotency")

DEFAULT_BATCH_SIZE = 1000  # SQLite: each batch holds the one write lock, about 3 ms
# PostgreSQL: a batch locks only its own rows, and its statement and WAL flush cost the same
# for 1,000 rows as for 5,000 (1,000,000 rows: 12.3 s at 1,000 a batch, 8.5 s at 5,000).
POSTGRES_BATCH_SIZE = 5000
DEFAULT_PAUSE = 1.0  # after each batch, a pause of this many times the batch's own duration
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


def default_batch_size(kind: str) -> int:
    """Rows per batch unless told: more on PostgreSQL, where a batch blocks no other writer."""
    return POSTGRES_BATCH_SIZE if kind == "postgresql" else DEFAULT_BATCH_SIZE


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
    batch_size: int | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    dry_run: bool = False,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[int], None] | None = None,
    pause: float = DEFAULT_PAUSE,
) -> CleanupReport:
    """Delete expired records, then stale claims, ``batch_size`` rows per transaction
    (``default_batch_size`` of the store's database unless given).

    After each full batch the run sleeps ``pause`` times as long as the batch took (0: no
    pause). ``stop`` is checked before each batch and ends a pause at once: once set, the run
    ends after the batch in progress with outcome ``stopped``. ``on_batch`` hears how many rows
    each batch deleted. A dry run only counts. On PostgreSQL, while another run holds the
    cleanup lock this returns at once with outcome ``skipped``.
    """
    if batch_size is None:
        batch_size = default_batch_size(store.kind)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if pause < 0:
        raise ValueError("pause must not be negative")
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

    async with one_cleaner(store) as (acquired, connection):
        if not acquired:
            report = CleanupReport(0, 0, 0, time.monotonic() - started, "skipped", SKIPPED_DETAIL)
            log.info("cleanup skipped: another replica is cleaning", extra=_fields(report))
            return report
        deleted = [0, 0]
        batches = 0
        stopped = False
        for index, (phase, order) in enumerate(phases):
            resume_from: Any = None
            while not stopped:
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                count, last, took = await _delete_batch(
                    store, connection, phase, order, batch_size, resume_from
                )
                if count:
                    batches += 1
                    deleted[index] += count
                    await checkpoint_after_batch(store)
                    if on_batch is not None:
                        on_batch(count)
                if count < batch_size:  # nothing more matches (or only rows held elsewhere)
                    if resume_from is None:
                        break
                    # One more look from the start: a row skipped while a request held it
                    # (and let go of it unchanged) lies before the resumption point.
                    resume_from = None
                    continue
                resume_from = last
                if pause > 0:
                    await _pause(took * pause, stop)

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


async def _pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or less if a stop is requested meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _count(connection: AsyncConnection, table: Table, condition: ColumnElement[bool]) -> int:
    return int(
        await connection.scalar(select(func.count()).select_from(table).where(condition)) or 0
    )


async def _delete_batch(
    store: SqlStore,
    connection: AsyncConnection | None,
    condition: ColumnElement[bool],
    order: Column[Any],
    batch_size: int,
    resume_from: Any,
) -> tuple[int, Any, float]:
    """Delete one batch: how many rows went, (PostgreSQL) the last ``order`` value deleted, and
    the seconds it took."""
    table = store.table
    # Rows a request in flight holds are skipped, not waited for (SQLite has no row locks and
    # leaves the clause out). The condition is checked again on each row deleted: a record
    # taken over by a retry since the batch was chosen stays.
    batch = select(table.c.id).where(condition)
    if resume_from is not None:
        batch = batch.where(order >= resume_from)
    batch = batch.order_by(order).limit(batch_size).with_for_update(skip_locked=True)
    if connection is None:
        # SQLite removes a deleted row's index entries at once: every batch can start from the
        # lowest key without walking over the earlier batches' rows. The batch's time is the
        # write lock's, from BEGIN IMMEDIATE's grant (not the wait for it) to the commit.
        async with store.transaction() as transaction:
            locked = time.monotonic()
            result = await transaction.context.execute(
                delete(table).where(table.c.id.in_(batch), condition)
            )
        return int(result.rowcount), None, time.monotonic() - locked
    # Chosen once, in a materialized CTE: PostgreSQL may run a LIMIT subquery under IN once per
    # outer row, each run skipping the rows the last one locked, and the "batch" becomes the
    # whole backlog. The rows are found again by their ctid (a TID scan, no primary-key lookup
    # per row): a row locked by the batch cannot move meanwhile; one updated before the lock
    # was taken has a new version that the DELETE's snapshot does not see, and that row stays.
    # The batch and its deletion are one statement, in autocommit.
    ctid: ColumnElement[Any] = literal_column("ctid")
    chosen = (
        batch.with_only_columns(ctid.label("ctid")).cte("cleanup_batch").prefix_with("MATERIALIZED")
    )
    gone = (
        delete(table)
        .where(ctid == func.any(func.array(select(chosen.c.ctid).scalar_subquery())), condition)
        .returning(order)
        .cte("cleanup_gone")
    )
    began = time.monotonic()
    with store_errors():
        result = await connection.execute(select(func.count(), func.max(gone.c[order.name])))
    count, last = result.one()
    return int(count), last, time.monotonic() - began


def _fields(report: CleanupReport) -> dict[str, Any]:
    return {
        "outcome": report.outcome,
        "rows_deleted": report.rows_deleted,
        "stale_removed": report.stale_removed,
        "batches": report.batches,
        "seconds": round(report.seconds, 3),
    }
