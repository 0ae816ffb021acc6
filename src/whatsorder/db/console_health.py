"""What the console's idempotency health page reads: outcomes by hour, keys in flight, cleanup."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.clock import as_utc
from whatsorder.db.idempotency_statistics import idempotency_statistics
from whatsorder.db.tables import idempotency_cleanup_runs, idempotency_stats, webhook_idempotency
from whatsorder.ordering.model import order_number
from whatsorder_idempotency import Status


class ConsoleHealth:
    def __init__(self, database: AsyncEngine) -> None:
        self._database = database

    async def overview(self, now: datetime) -> dict[str, Any]:
        async with self._database.connect() as connection:
            return await idempotency_statistics(connection, now)

    async def hourly(self, now: datetime) -> list[dict[str, Any]]:
        """Requests per hour and outcome over the last 24 hours, oldest first."""
        since = (now - timedelta(hours=23)).replace(minute=0, second=0, microsecond=0)
        stats = idempotency_stats
        statement = (
            select(stats.c.hour, stats.c.outcome, func.sum(stats.c.count).label("n"))
            .where(stats.c.hour >= since)
            .group_by(stats.c.hour, stats.c.outcome)
        )
        async with self._database.connect() as connection:
            rows = await connection.execute(statement)
            counts: dict[tuple[datetime, str], int] = {
                (as_utc(row.hour), row.outcome): int(row.n) for row in rows
            }
        hours = [since + timedelta(hours=n) for n in range(24)]
        return [
            {
                "hour": hour,
                "new": counts.get((hour, "new"), 0) + counts.get((hour, "takeover"), 0),
                "replayed": counts.get((hour, "replayed"), 0),
                "other": sum(
                    count
                    for (at, outcome), count in counts.items()
                    if at == hour and outcome not in {"new", "takeover", "replayed"}
                ),
            }
            for hour in hours
        ]

    async def in_flight(self, now: datetime, limit: int = 20) -> list[dict[str, Any]]:
        """Keys claimed and not completed, oldest first, with their age in seconds."""
        records = webhook_idempotency
        statement = (
            select(
                records.c.webhook_type,
                records.c.idempotency_key,
                records.c.created_at,
                records.c.locked_until,
            )
            .where(records.c.status == Status.IN_PROGRESS.value)
            .order_by(records.c.created_at)
            .limit(limit)
        )
        async with self._database.connect() as connection:
            rows = [dict(row._mapping) for row in await connection.execute(statement)]
        for row in rows:
            row["age_seconds"] = int((now - as_utc(row["created_at"])).total_seconds())
        return rows

    async def cleanup_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        runs = idempotency_cleanup_runs
        async with self._database.connect() as connection:
            rows = await connection.execute(select(runs).order_by(runs.c.id.desc()).limit(limit))
            return [dict(row._mapping) for row in rows]

    async def lookup(self, key: str) -> list[dict[str, Any]]:
        """Every record of ``key`` (one per webhook type), with the order it made."""
        records = webhook_idempotency
        statement = select(records).where(records.c.idempotency_key == key[:255])
        async with self._database.connect() as connection:
            rows = [dict(row._mapping) for row in await connection.execute(statement)]
        for row in rows:
            body = row.get("response_body")
            row["answer"] = None if body is None else bytes(body)[:500].decode("utf-8", "replace")
            row["order"] = None if row["order_id"] is None else order_number(row["order_id"])
        return rows
