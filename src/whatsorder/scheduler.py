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

from cronsim import CronSim, CronSimError
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder import observability
from whatsorder.clock import as_utc, utcnow
from whatsorder.db.dead_letter_redrives import DeadLetterRedrives
from whatsorder.db.tables import idempotency_cleanup_runs, webhook_idempotency
from whatsorder.settings import Settings
from whatsorder_idempotency import SqlStore
from whatsorder_idempotency.cleanup import DEFAULT_BATCH_SIZE, delete_expired

log = logging.getLogger(__name__)

Trigger = Literal["schedule", "cli", "console"]
NextRun = Callable[[datetime], datetime]
Clock = Callable[[], datetime]


def cron_schedule(expression: str) -> NextRun:
    """The first time after a moment that ``expression`` names (5 fields, or 6 with seconds).

    Raises ``ValueError`` at once for an expression that is invalid or never due.
    """

    def next_run(after: datetime) -> datetime:
        try:
            due = next(CronSim(expression, as_utc(after)), None)
        except CronSimError as error:
            raise ValueError(f"{expression!r} is not a valid cron expression: {error}") from error
        if due is None:
            raise ValueError(f"{expression!r} is never due")
        return due

    next_run(utcnow())
    return next_run


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
    batch_size: int = DEFAULT_BATCH_SIZE,
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


class CleanupScheduler:
    """Runs the cleanup whenever ``next_run`` says, in the background, until stopped.

    ``clock`` and ``poll_seconds`` exist for tests: waiting rechecks the clock at least every
    ``poll_seconds``, so a fast clock runs an every-minute schedule in milliseconds (and a
    clock that jumps is noticed within a poll).
    """

    def __init__(
        self,
        database: AsyncEngine,
        next_run: NextRun,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        clock: Clock = utcnow,
        poll_seconds: float = 60.0,
        stop_timeout: timedelta = timedelta(seconds=10),
        payload_days: int | None = None,
    ) -> None:
        self._database = database
        self._payload_days = payload_days
        self._next_run = next_run
        self._batch_size = batch_size
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._stop_timeout = stop_timeout.total_seconds()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run_on_schedule(), name="whatsorder-cleanup"
            )

    async def stop(self) -> None:
        """Stop after the batch in progress; past ``stop_timeout`` cancel it (it rolls back)."""
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, timeout=self._stop_timeout)
        except TimeoutError:
            log.warning("Idempotency cleanup cancelled at shutdown; its last batch rolled back")

    async def _run_on_schedule(self) -> None:
        while not self._stop.is_set():
            try:
                due = self._next_run(self._clock())
                if not await self._wait_until(due):
                    return
                await run_cleanup(
                    self._database,
                    trigger="schedule",
                    batch_size=self._batch_size,
                    stop=self._stop,
                    clock=self._clock,
                    payload_days=self._payload_days,
                )
            except Exception as error:
                log.error(
                    "Error in idempotency",
                    exc_info=True,
                    extra={"operation": "cleanup_schedule", "error": type(error).__name__},
                )
                await self._pause(self._poll_seconds)  # never a tight loop of failures

    async def _wait_until(self, due: datetime) -> bool:
        """Sleep until ``due`` by the clock; ``False`` if stopped first."""
        while (remaining := (due - self._clock()).total_seconds()) > 0:
            if await self._pause(min(remaining, self._poll_seconds)):
                return False
        return not self._stop.is_set()

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` if stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True
