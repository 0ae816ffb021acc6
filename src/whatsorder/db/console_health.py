"""What the console's idempotency health page reads: outcomes by hour, keys in flight, cleanup."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder.clock import as_utc
from whatsorder.db.idempotency_statistics import outcomes_since
from whatsorder.db.tables import idempotency_cleanup_runs, idempotency_stats, webhook_idempotency
from whatsorder.ordering.model import order_number

COUNT_BOUND = 100_000  # counting a million rows takes longer than a page may
IN_FLIGHT = text("webhook_idempotency.status = 'in_progress'")  # ix_webhook_idempotency_in_flight
# The table's webhook types, each found with one probe of the unique (type, key) index.
WEBHOOK_TYPES = text(
    "WITH RECURSIVE kinds(kind) AS ("
    " SELECT min(webhook_type) FROM webhook_idempotency"
    " UNION ALL SELECT (SELECT min(webhook_type) FROM webhook_idempotency"
    " WHERE webhook_type > kind) FROM kinds WHERE kind IS NOT NULL"
    ") SELECT kind FROM kinds WHERE kind IS NOT NULL"
)


class ConsoleHealth:
    def __init__(self, database: AsyncEngine) -> None:
        self._database = database

    async def overview(self, now: datetime) -> dict[str, Any]:
        """Records, the expiry backlog, the table's size and the last day's outcomes; counts
        are exact up to ``COUNT_BOUND`` (beyond, an estimate on PostgreSQL)."""
        records = webhook_idempotency
        async with self._database.connect() as connection:
            total = await bounded_count(connection, select(records.c.id))
            estimate = await _estimate(connection, records.name) if total > COUNT_BOUND else None
            expired = await bounded_count(
                connection, select(records.c.id).where(records.c.expires_at <= now)
            )
            return {
                "records": {
                    "total": counted(total, estimate),
                    "expired_awaiting_cleanup": counted(expired),
                    **await _size(connection, records.name),
                },
                "last_day": await outcomes_since(connection, now - timedelta(days=1)),
            }

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
            # Spelled out, not a parameter: a partial index's condition matches only a literal.
            .where(IN_FLIGHT)
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
        async with self._database.connect() as connection:
            # The key's index leads with the webhook type: look the key up under each type
            # the table holds (a few index probes) rather than read a million rows.
            kinds = list((await connection.execute(WEBHOOK_TYPES)).scalars())
            statement = select(records).where(
                records.c.webhook_type.in_(kinds), records.c.idempotency_key == key[:255]
            )
            rows = [dict(row._mapping) for row in await connection.execute(statement)]
        for row in rows:
            body = row.get("response_body")
            row["answer"] = None if body is None else bytes(body)[:500].decode("utf-8", "replace")
            row["order"] = None if row["order_id"] is None else order_number(row["order_id"])
        return rows


def counted(count: int, estimate: int | None = None) -> dict[str, Any]:
    """A count as the page says it: exact, about ``estimate``, or at least ``COUNT_BOUND``."""
    if count <= COUNT_BOUND:
        return {"n": count, "says": f"{count:,}"}
    if estimate is not None and estimate > COUNT_BOUND:
        return {
            "n": estimate,
            "says": f"about {estimate:,} (an estimate from the table's statistics)",
        }
    return {"n": count, "says": f"more than {COUNT_BOUND:,} (not counted further)"}


async def _estimate(connection: AsyncConnection, table: str) -> int | None:
    """PostgreSQL's estimate of the table's rows (as of its last ANALYZE); None elsewhere."""
    if connection.dialect.name != "postgresql":
        return None
    rows = await connection.scalar(
        text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)"),
        {"t": table},
    )
    return None if rows is None else int(rows)


async def bounded_count(connection: AsyncConnection, rows: Select[Any]) -> int:
    """How many ``rows``, counting no further than one past ``COUNT_BOUND`` (``counted`` says
    which it was)."""
    bounded = rows.limit(COUNT_BOUND + 1).subquery()
    return int(await connection.scalar(select(func.count()).select_from(bounded)) or 0)


async def _size(connection: AsyncConnection, table: str) -> dict[str, Any]:
    """The table with its indexes on PostgreSQL; on SQLite, the whole database file (measuring
    one table's pages reads all of them: seconds at a million rows)."""
    if connection.dialect.name == "postgresql":
        size = await connection.scalar(text("SELECT pg_total_relation_size(:t)"), {"t": table})
        return {"size_bytes": int(size or 0), "size_of": "the table and its indexes"}
    pages = await connection.scalar(text("PRAGMA page_count"))
    page_size = await connection.scalar(text("PRAGMA page_size"))
    return {"size_bytes": int(pages or 0) * int(page_size or 0), "size_of": "the database file"}
