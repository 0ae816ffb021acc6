"""Idempotency outcomes per hour, counted in each worker and added up in the database.

Counting in memory keeps a replay at one store round trip; a flush every few seconds (and at
shutdown) adds this worker's counts to ``idempotency_stats`` with one upsert per row, so the
figures cover every worker and replica. A crash loses at most one interval of counts: these are
statistics, never a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db.dialect import upsert
from whatsorder.db.tables import idempotency_stats
from whatsorder_idempotency import IdempotencyEvent

log = logging.getLogger("whatsorder.statistics")

Bucket = tuple[datetime, str, str]  # (hour, webhook type, outcome)


class OutcomeCounter:
    """An engine listener: counts outcomes per hour until ``flush`` writes them."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock
        self._counts: Counter[Bucket] = Counter()

    def __call__(self, event: IdempotencyEvent) -> None:
        hour = self._clock().replace(minute=0, second=0, microsecond=0)
        self._counts[(hour, event.scope, event.outcome)] += 1

    async def flush(self, database: AsyncEngine) -> int:
        """Add the counts so far to the database; returns how many rows were written."""
        pending, self._counts = self._counts, Counter()
        if not pending:
            return 0
        try:
            async with database.begin() as connection:
                for (hour, scope, outcome), count in pending.items():
                    statement = upsert(database, idempotency_stats).values(
                        hour=hour, webhook_type=scope, outcome=outcome, count=count
                    )
                    await connection.execute(
                        statement.on_conflict_do_update(
                            index_elements=["hour", "webhook_type", "outcome"],
                            set_={"count": idempotency_stats.c.count + statement.excluded.count},
                        )
                    )
        except Exception:
            self._counts.update(pending)  # keep them for the next flush
            raise
        return len(pending)

    async def run(self, database: AsyncEngine, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Flush every ``interval`` seconds until ``stop`` is set, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            try:
                await self.flush(database)
            except Exception as error:  # the database may be briefly away; counts are kept
                log.warning("statistics flush failed: %s", type(error).__name__)


async def report(database: AsyncEngine, counter: OutcomeCounter | None = None) -> dict[str, Any]:
    """The statistics as of now, this worker's latest counts included."""
    from whatsorder.db.idempotency_statistics import idempotency_statistics

    if counter is not None:
        await counter.flush(database)
    async with database.connect() as connection:
        figures = await idempotency_statistics(connection, utcnow())
    records = figures["records"]
    statuses: dict[str, int] = {}
    for by_status in records["by_webhook_type"].values():
        for status, count in by_status.items():
            statuses[status] = statuses.get(status, 0) + count
    # The record gauges follow every look at the statistics (a scrape itself stays cheap).
    observability.set_record_counts(statuses, expired=records["expired_awaiting_cleanup"])
    return figures
