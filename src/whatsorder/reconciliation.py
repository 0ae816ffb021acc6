"""The reconciliation sweep, run once over every configured provider (issue #17): by the CLI
(``whatsorder reconcile``) and on ``WHATSORDER_RECONCILE_SCHEDULE``.

One replica sweeps at a time on PostgreSQL (a session advisory lock, tried once, never waited
for): two sweeps at once would be safe, since every payment credits once by its business key,
but would ask the providers twice. A provider that cannot answer is reported and the others are
still swept.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.clock import utcnow
from whatsorder.db.payment_links import awaiting_payment
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering.reconcile_ports import PaymentSource, SweepFailed
from whatsorder.ordering.services.reconciliation import SweepReport, sweep
from whatsorder.providers.links.configured import payment_sources
from whatsorder.schedules import NextRun, ScheduledJob, cron_schedule
from whatsorder.settings import Settings

log = logging.getLogger("whatsorder.reconciliation")

LOCK_KEY = int.from_bytes(hashlib.sha256(b"whatsorder-reconcile").digest()[:8], "big", signed=True)
NO_SOURCES = (
    "no payment provider's API keys are set (WHATSORDER_STRIPE_API_KEY, "
    "WHATSORDER_RAZORPAY_KEY_ID and WHATSORDER_RAZORPAY_KEY_SECRET): nothing to ask"
)


@dataclass(slots=True)
class ReconcileRun:
    """One sweep over every provider: each one's report, or why it could not be swept."""

    since: datetime
    until: datetime
    dry_run: bool
    reports: list[SweepReport] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # provider → the provider's message
    skipped: str | None = None
    # Orders still unpaid, placed before the window's end: how many, and the oldest few with
    # their live payment link (what is left to chase after the sweep).
    awaiting_count: int = 0
    awaiting: list[dict[str, Any]] = field(default_factory=list)


async def run_reconcile(
    database: AsyncEngine,
    settings: Settings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    sources: Sequence[PaymentSource] | None = None,
) -> ReconcileRun:
    """Sweep the window the settings give (lookback hours, up to grace minutes ago)."""
    now = now or utcnow()
    run = ReconcileRun(
        since=now - timedelta(hours=settings.reconcile_lookback_hours),
        until=now - timedelta(minutes=settings.reconcile_grace_minutes),
        dry_run=dry_run,
    )
    chosen = list(payment_sources(settings) if sources is None else sources)
    if not chosen:
        run.skipped = NO_SOURCES
        await _note_awaiting(database, run)
        return run
    async with _one_sweeper(database) as acquired:
        if not acquired:
            run.skipped = "another replica is sweeping now"
            return run
        for source in chosen:
            try:
                report = await sweep(
                    lambda: SqlUnitOfWork(database),
                    source,
                    run.since,
                    run.until,
                    now,
                    dry_run=dry_run,
                )
            except SweepFailed as failure:
                run.failures[source.provider] = str(failure)
                log.warning(
                    "Reconciliation sweep failed",
                    extra={"provider": source.provider, "reason": str(failure)[:200]},
                )
                continue
            run.reports.append(report)
    await _note_awaiting(database, run)
    return run


async def _note_awaiting(database: AsyncEngine, run: ReconcileRun) -> None:
    async with database.connect() as connection:
        run.awaiting_count, run.awaiting = await awaiting_payment(connection, run.until)


class ReconcileScheduler(ScheduledJob):
    """Sweeps on ``WHATSORDER_RECONCILE_SCHEDULE`` in the background, until stopped."""

    name = "whatsorder-reconcile"

    def __init__(
        self,
        database: AsyncEngine,
        settings: Settings,
        sources: Sequence[PaymentSource],
        next_run: NextRun,
        **timing: Any,
    ) -> None:
        super().__init__(next_run, **timing)
        self._database = database
        self._settings = settings
        self._sources = list(sources)

    @classmethod
    def from_settings(cls, database: AsyncEngine, settings: Settings) -> ReconcileScheduler | None:
        """The sweep the settings ask for; None when the schedule is empty or no provider's
        keys are set (there is nothing to ask)."""
        sources = payment_sources(settings)
        if not settings.reconcile_schedule or not sources:
            return None
        return cls(database, settings, sources, cron_schedule(settings.reconcile_schedule))

    async def run_once(self) -> None:
        run = await run_reconcile(
            self._database, self._settings, now=self._clock(), sources=self._sources
        )
        for report in run.reports:
            log.info(
                "Reconciliation sweep",
                extra={
                    "provider": report.provider,
                    "found": report.found,
                    "outcomes": dict(report.tally),
                },
            )


@asynccontextmanager
async def _one_sweeper(database: AsyncEngine) -> AsyncIterator[bool]:
    if database.dialect.name != "postgresql":
        yield True  # SQLite: one host, and the sweep's writes take its one writer in turn
        return
    async with database.connect() as connection:
        acquired = bool(await connection.scalar(select(func.pg_try_advisory_lock(LOCK_KEY))))
        await connection.commit()
        try:
            yield acquired
        finally:
            if acquired:
                await connection.scalar(select(func.pg_advisory_unlock(LOCK_KEY)))
                await connection.commit()
