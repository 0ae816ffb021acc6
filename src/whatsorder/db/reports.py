"""Read-only views for operators: the orders list and the audit of the invariants."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.outbox import replies_sent_twice
from whatsorder.db.payment_audit import payment_audit
from whatsorder.db.tables import (
    dead_letters,
    idempotency_cleanup_runs,
    idempotency_stats,
    ledger_entries,
    order_items,
    orders,
    payments,
    products,
    retailers,
    webhook_idempotency,
)
from whatsorder.idempotency.record import as_utc
from whatsorder.ordering.model import EntryType, OrderStatus, order_number


async def recent_orders(connection: AsyncConnection, limit: int = 50) -> list[dict[str, Any]]:
    statement = (
        select(
            orders.c.id,
            orders.c.status,
            orders.c.total,
            orders.c.currency,
            orders.c.source,
            orders.c.created_at,
            retailers.c.name.label("retailer"),
        )
        .join(retailers, retailers.c.id == orders.c.retailer_id)
        .order_by(orders.c.id.desc())
        .limit(limit)
    )
    return [
        {
            "number": order_number(row.id),
            "status": row.status,
            "total": row.total,
            "currency": row.currency,
            "retailer": row.retailer,
            "source": row.source,
            "created_at": row.created_at.isoformat() if row.created_at else None,
        }
        for row in await connection.execute(statement)
    ]


async def audit(connection: AsyncConnection) -> list[str]:
    """Every violated invariant of the books, in words; an empty list means all hold.

    Stock (initial - ordered + restocked), order totals, one debit per order (and a reversal if
    cancelled), unique business keys, answers given to the right retailer, dead letters kept
    once, replies accepted once, and the money against what the providers reported
    (payment_audit.py).
    """
    problems: list[str] = []

    live_lines = (
        select(order_items.c.product_id, func.sum(order_items.c.quantity).label("ordered"))
        .join(orders, orders.c.id == order_items.c.order_id)
        .where(orders.c.status != OrderStatus.CANCELLED.value)
        .group_by(order_items.c.product_id)
        .subquery()
    )
    prods = await connection.execute(
        select(
            products.c.sku,
            products.c.stock,
            products.c.initial_stock,
            products.c.restocked,
            func.coalesce(live_lines.c.ordered, 0).label("ordered"),
        ).outerjoin(live_lines, live_lines.c.product_id == products.c.id)
    )
    for prod in prods:
        expected = prod.initial_stock - prod.ordered + prod.restocked
        if prod.stock != expected:
            problems.append(
                f"stock of {prod.sku} is {prod.stock}, expected {expected} "
                f"(initial {prod.initial_stock} - ordered {prod.ordered}"
                f" + restocked {prod.restocked})"
            )

    line_totals = (
        select(
            order_items.c.order_id,
            func.sum(order_items.c.quantity * order_items.c.unit_price).label("lines_total"),
        )
        .group_by(order_items.c.order_id)
        .subquery()
    )
    for tot in await connection.execute(
        select(orders.c.id, orders.c.total, func.coalesce(line_totals.c.lines_total, 0).label("t"))
        .outerjoin(line_totals, line_totals.c.order_id == orders.c.id)
        .where(orders.c.total != func.coalesce(line_totals.c.lines_total, 0))
    ):
        problems.append(f"{order_number(tot.id)} total {tot.total} != its lines' sum {tot.t}")

    # The ledger must say exactly what the orders say: one debit each, one reversal if cancelled.
    debit = EntryType.ORDER_DEBIT.value
    reversal = EntryType.ORDER_REVERSAL.value
    entries = (
        select(
            ledger_entries.c.order_id,
            func.sum(case((ledger_entries.c.entry_type == debit, 1), else_=0)).label("debits"),
            func.sum(case((ledger_entries.c.entry_type == reversal, 1), else_=0)).label(
                "reversals"
            ),
            func.sum(
                case(
                    (ledger_entries.c.entry_type.in_([debit, reversal]), ledger_entries.c.amount),
                    else_=0,
                )
            ).label("net"),
        )
        .group_by(ledger_entries.c.order_id)
        .subquery()
    )
    for led in await connection.execute(
        select(
            orders.c.id,
            orders.c.status,
            orders.c.total,
            func.coalesce(entries.c.debits, 0).label("debits"),
            func.coalesce(entries.c.reversals, 0).label("reversals"),
            func.coalesce(entries.c.net, 0).label("net"),
        ).outerjoin(entries, entries.c.order_id == orders.c.id)
    ):
        cancelled = led.status == OrderStatus.CANCELLED.value
        expected_net = 0 if cancelled else -led.total
        if led.debits != 1 or led.reversals != (1 if cancelled else 0) or led.net != expected_net:
            problems.append(
                f"{order_number(led.id)} ({led.status}) has {led.debits} debit(s), "
                f"{led.reversals} reversal(s) and a net of {led.net}; expected net {expected_net}"
            )

    for dupo in await connection.execute(
        select(orders.c.source, orders.c.source_message_id, func.count().label("n"))
        .group_by(orders.c.source, orders.c.source_message_id)
        .having(func.count() > 1)
    ):
        problems.append(
            f"{dupo.n} orders share the source message {dupo.source}:{dupo.source_message_id}"
        )

    for dupp in await connection.execute(
        select(payments.c.provider, payments.c.provider_event_id, func.count().label("n"))
        .group_by(payments.c.provider, payments.c.provider_event_id)
        .having(func.count() > 1)
    ):
        problems.append(
            f"{dupp.n} payments share the event {dupp.provider}:{dupp.provider_event_id}"
        )

    for foreign_entry in await connection.execute(
        select(ledger_entries.c.order_id, ledger_entries.c.retailer_id)
        .join(orders, orders.c.id == ledger_entries.c.order_id)
        .where(orders.c.retailer_id != ledger_entries.c.retailer_id)
    ):
        problems.append(
            f"a ledger entry of {order_number(foreign_entry.order_id)} is on another retailer"
        )
    problems.extend(await _answers_of_other_retailers(connection))
    problems.extend(await _dead_letters_kept_twice(connection))
    problems.extend(await replies_sent_twice(connection))
    problems.extend(await payment_audit(connection))
    return problems


async def _answers_of_other_retailers(connection: AsyncConnection) -> list[str]:
    """A stored answer names an order of the retailer whose request it answered, never another's.

    (A message carrying another sender's message id was once answered with that sender's order.)
    """
    record = webhook_idempotency
    rows = await connection.execute(
        select(record.c.webhook_type, record.c.idempotency_key, record.c.order_id)
        .join(orders, orders.c.id == record.c.order_id)
        .where(record.c.retailer_id.is_not(None), orders.c.retailer_id != record.c.retailer_id)
    )
    return [
        f"the stored answer of {row.webhook_type} key {row.idempotency_key!r} names "
        f"{order_number(row.order_id)}, an order of another retailer"
        for row in rows
    ]


async def _dead_letters_kept_twice(connection: AsyncConnection) -> list[str]:
    """One dead letter per delivery that could not be processed, however often it came."""
    rows = await connection.execute(
        select(dead_letters.c.provider, func.min(dead_letters.c.id).label("first"), func.count())
        .group_by(dead_letters.c.provider, dead_letters.c.body)
        .having(func.count() > 1)
    )
    return [
        f"a {row.provider} dead letter is kept {row[2]} times (first: dead letter {row.first})"
        for row in rows
    ]


ERROR_OUTCOMES = ("store_busy", "store_unavailable", "handler_error")


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
    outcomes: dict[str, dict[str, int]] = {}
    for name, since in windows.items():
        hour_start = since.replace(minute=0, second=0, microsecond=0)
        rows = await connection.execute(
            select(idempotency_stats.c.outcome, func.sum(idempotency_stats.c.count).label("n"))
            .where(idempotency_stats.c.hour >= hour_start)
            .group_by(idempotency_stats.c.outcome)
        )
        outcomes[name] = {row.outcome: int(row.n) for row in rows}

    def window(counts: dict[str, int]) -> dict[str, Any]:
        replays = counts.get("replayed", 0)
        retries = replays + counts.get("in_flight", 0) + counts.get("mismatch", 0)
        return {
            "requests": sum(counts.values()),
            "new": counts.get("new", 0) + counts.get("takeover", 0),
            "replays": replays,
            "conflicts": counts.get("in_flight", 0),
            "mismatches": counts.get("mismatch", 0),
            "errors": sum(
                counts.get(k, 0) for k in ("store_busy", "store_unavailable", "handler_error")
            ),
            "retry_hit_rate": round(replays / retries, 4) if retries else None,
            "by_outcome": counts,
        }

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
            "oldest": _iso(oldest),
            "newest": _iso(newest),
            "table_bytes": await _table_bytes(connection, records.name),
        },
        **{name: window(counts) for name, counts in outcomes.items()},
        "last_cleanup": None
        if last_cleanup is None
        else {
            "started_at": _iso(last_cleanup["started_at"]),
            "finished_at": _iso(last_cleanup["finished_at"]),
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


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


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


async def recent_dead_letters(connection: AsyncConnection, limit: int = 50) -> list[dict[str, Any]]:
    """Signed deliveries that could not be processed, newest first (bodies already redacted)."""
    rows = await connection.execute(
        select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    )
    return [
        {
            "id": row.id,
            "provider": row.provider,
            "reason": row.reason,
            "received_at": _iso(row.received_at),
            "body": row.body,
        }
        for row in rows
    ]
