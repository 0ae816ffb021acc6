"""The idempotency statistics an operator checks, read from the database as of a moment.

Records by webhook type and status, the expiry backlog, outcomes of the last hour and day (from
the per-hour counts ``whatsorder.statistics`` flushes), the table's size, dead letters and the
last cleanup run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.clock import as_utc, isoformat
from whatsorder.db.tables import (
    dead_letters,
    idempotency_cleanup_runs,
    idempotency_stats,
    webhook_idempotency,
)
from whatsorder_idempotency import events

# Outcomes counted as errors: the store or the handler failed, nothing was answered from a record.
ERROR_OUTCOMES = (events.STORE_BUSY, events.STORE_UNAVAILABLE, events.HANDLER_ERROR)


async def idempotency_statistics(connection: AsyncConnection, now: datetime) -> dict[str, Any]:
    """What an operator checks: records, expiry backlog, outcomes, hit rate, size, cleanup."""
    records = webhook_idempotency
    by_type: dict[str, dict[str, int]] = {}
    for row in await connection.execute(
        select(records.c.webhook_type, records.c.status, func.count().label("n")).group_by(
            records.c.webhook_type, records.c.status
        )
    ):
        by_type.setdefault(row.webhook_type, {})[row.status] = row.n
    expired = await connection.scalar(
        select(func.count()).select_from(records).where(records.c.expires_at <= now)
    )
    oldest, newest = (
        await connection.execute(
            select(func.min(records.c.created_at), func.max(records.c.created_at))
        )
    ).one()

    windows = {"last_hour": now - timedelta(hours=1), "last_day": now - timedelta(days=1)}
    outcomes = {name: await outcomes_since(connection, since) for name, since in windows.items()}

    last_cleanup = (
        (
            await connection.execute(
                select(idempotency_cleanup_runs)
                .order_by(idempotency_cleanup_runs.c.id.desc())
                .limit(1)
            )
        )
        .mappings()
        .first()
    )
    dead_total, dead_day = (
        await connection.execute(
            select(
                func.count(),
                func.count().filter(dead_letters.c.received_at >= now - timedelta(days=1)),
            ).select_from(dead_letters)
        )
    ).one()
    return {
        "generated_at": now.isoformat(),
        "dead_letters": {"total": dead_total, "last_day": dead_day},
        "records": {
            "total": sum(sum(statuses.values()) for statuses in by_type.values()),
            "by_webhook_type": by_type,
            "expired_awaiting_cleanup": int(expired or 0),
            "oldest": isoformat(oldest),
            "newest": isoformat(newest),
            "table_bytes": await _table_bytes(connection, records.name),
        },
        **outcomes,
        "last_cleanup": None
        if last_cleanup is None
        else {
            "started_at": isoformat(last_cleanup["started_at"]),
            "finished_at": isoformat(last_cleanup["finished_at"]),
            "rows_deleted": last_cleanup["rows_deleted"],
            "stale_removed": last_cleanup["stale_removed"],
            "seconds": (
                as_utc(last_cleanup["finished_at"]) - as_utc(last_cleanup["started_at"])
            ).total_seconds(),
            "outcome": last_cleanup["outcome"],
            "trigger": last_cleanup["trigger"],
            "detail": last_cleanup["detail"],
        },
    }


async def outcomes_since(connection: AsyncConnection, since: datetime) -> dict[str, Any]:
    """Requests by outcome from the hour of ``since`` on (the per-hour counts), with the
    figures an operator reads: new, replays, conflicts, mismatches, errors, retry hit rate."""
    hour_start = since.replace(minute=0, second=0, microsecond=0)
    rows = await connection.execute(
        select(idempotency_stats.c.outcome, func.sum(idempotency_stats.c.count).label("n"))
        .where(idempotency_stats.c.hour >= hour_start)
        .group_by(idempotency_stats.c.outcome)
    )
    counts = {row.outcome: int(row.n) for row in rows}
    replays = counts.get("replayed", 0)
    retries = replays + counts.get("in_flight", 0) + counts.get("mismatch", 0)
    return {
        "requests": sum(counts.values()),
        "new": counts.get("new", 0) + counts.get("takeover", 0),
        "replays": replays,
        "conflicts": counts.get("in_flight", 0),
        "mismatches": counts.get("mismatch", 0),
        "errors": sum(counts.get(outcome, 0) for outcome in ERROR_OUTCOMES),
        "retry_hit_rate": round(replays / retries, 4) if retries else None,
        "by_outcome": counts,
    }


async def _table_bytes(connection: AsyncConnection, table: str) -> int | None:
    """The table with its indexes, on disk."""
    if connection.dialect.name == "postgresql":
        size = await connection.scalar(text("SELECT pg_total_relation_size(:t)"), {"t": table})
        return int(size or 0)
    try:
        size = await connection.scalar(
            text(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = :t OR name IN "
                "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t)"
            ),
            {"t": table},
        )
    except DBAPIError:  # SQLite built without the dbstat table
        return None
    return int(size or 0)
