"""The idempotency cleanup job: on a cron schedule inside the service, or once from the CLI.

Every run but a dry one is recorded in ``idempotency_cleanup_runs`` (what ``whatsorder stats``
shows as the last cleanup) and counted in the metrics. A run that fails is recorded and logged
as "Error in idempotency"; the schedule goes on. Schedules are cron expressions read in UTC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db.dead_letter_redrives import DeadLetterRedrives
from whatsorder.db.tables import idempotency_cleanup_runs, webhook_idempotency
from whatsorder.schedules import Clock, NextRun, ScheduledJob, cron_schedule
from whatsorder.settings import Settings
from whatsorder_idempotency import SqlStore
from whatsorder_idempotency.cleanup import delete_expired

log = logging.getLogger(__name__)

Trigger = Literal["schedule", "cli", "console"]


@dataclass(frozen=True, slots=True)
class CleanupRun:
    """One cleanup run as recorded: what it did, when, why it ran and how it ended."""

    trigger: Trigger
    started_at: datetime
    finished_at: datetime
    seconds: float
    rows_deleted: int
    stale_removed: int
    batches: int
    outcome: str  # completed, stopped, skipped, failed
    detail: str | None = None
    dry_run: bool = False
    payloads_cleared: int = 0  # dead letters' re-drive payloads past their retention


async def run_cleanup(
    database: AsyncEngine,
    *,
    trigger: Trigger,
    batch_size: int | None = None,
    dry_run: bool = False,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[int], None] | None = None,
    clock: Clock = utcnow,
    payload_days: int | None = None,
) -> CleanupRun:
    """Clean whatsorder's idempotency table once and record the run; never raises for a failure.

    With ``payload_days``, the dead letters received longer ago lose their re-drive payload
    (the unredacted delivery; ``WHATSORDER_DEAD_LETTER_PAYLOAD_DAYS``).

    A failed run comes back (and is recorded) with outcome ``failed``, the error's class in
    ``detail`` and, as ``rows_deleted``, the rows its finished batches had removed.
    """
    store = SqlStore(database, webhook_idempotency)
    started_at = clock()
    started = time.monotonic()
    removed = [0, 0]  # rows, batches: what a failing run had done before it failed

    def batch_done(count: int) -> None:
        removed[0] += count
        removed[1] += 1
        if on_batch is not None:
            on_batch(count)

    try:
        report = await delete_expired(
            store,
            now=started_at,
            batch_size=batch_size,
            dry_run=dry_run,
            stop=stop,
            on_batch=batch_done,
        )
        cleared = 0
        if payload_days is not None and not dry_run:
            cleared = await DeadLetterRedrives(database).clear_expired_payloads(
                started_at - timedelta(days=payload_days)
            )
        run = CleanupRun(
            trigger,
            started_at,
            clock(),
            report.seconds,
            report.rows_deleted,
            report.stale_removed,
            report.batches,
            report.outcome,
            report.detail,
            dry_run,
            cleared,
        )
    except Exception as error:
        log.error(
            "Error in idempotency",
            exc_info=True,
            extra={"operation": "cleanup", "trigger": trigger, "error": type(error).__name__},
        )
        summary = str(error).splitlines()[0] if str(error) else ""
        run = CleanupRun(
            trigger,
            started_at,
            clock(),
            time.monotonic() - started,
            removed[0],
            0,
            removed[1],
            "failed",
            f"{type(error).__name__}: {summary}"[:500],
            dry_run,
        )
    if not dry_run:
        observability.record_cleanup(run)
        await _record(database, run)
    return run


async def _record(database: AsyncEngine, run: CleanupRun) -> None:
    try:
        async with database.begin() as connection:
            await connection.execute(
                insert(idempotency_cleanup_runs).values(
                    started_at=run.started_at,
                    finished_at=run.finished_at,
                    rows_deleted=run.rows_deleted,
                    stale_removed=run.stale_removed,
                    outcome=run.outcome,
                    detail=run.detail,
                    trigger=run.trigger,
                )
            )
    except Exception as error:  # the database that failed the run may fail this too
        log.error(
            "Error in idempotency",
            exc_info=True,
            extra={"operation": "cleanup_record", "error": type(error).__name__},
        )


class CleanupScheduler(ScheduledJob):
    """Runs the cleanup whenever ``next_run`` says, in the background, until stopped; a
    shutdown stops it after the batch in progress (the rest of the run is left for the next)."""

    name = "whatsorder-cleanup"

    def __init__(
        self,
        database: AsyncEngine,
        next_run: NextRun,
        *,
        batch_size: int | None = None,
        clock: Clock = utcnow,
        poll_seconds: float = 60.0,
        stop_timeout: timedelta = timedelta(seconds=10),
        payload_days: int | None = None,
    ) -> None:
        super().__init__(
            next_run, clock=clock, poll_seconds=poll_seconds, stop_timeout=stop_timeout
        )
        self._database = database
        self._payload_days = payload_days
        self._batch_size = batch_size

    @classmethod
    def from_settings(cls, database: AsyncEngine, settings: Settings) -> CleanupScheduler | None:
        """The scheduler ``WHATSORDER_CLEANUP_SCHEDULE`` asks for; ``None`` when it is empty."""
        if not settings.cleanup_schedule:
            return None
        return cls(
            database,
            cron_schedule(settings.cleanup_schedule),
            batch_size=settings.cleanup_batch_size,
            payload_days=settings.dead_letter_payload_days,
        )

    async def run_once(self) -> None:
        await run_cleanup(
            self._database,
            trigger="schedule",
            batch_size=self._batch_size,
            stop=self._stop,
            clock=self._clock,
            payload_days=self._payload_days,
        )

    def log_failure(self, error: Exception) -> None:
        log.error(
            "Error in idempotency",
            exc_info=True,
            extra={"operation": "cleanup_schedule", "error": type(error).__name__},
        )
