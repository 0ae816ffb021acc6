"""After the faults: do the books say exactly what the provider saw acknowledged?

``check_books`` compares the database with ``Expected``: one order per acknowledged message with
the lines asked for, one payment and one ledger credit per acknowledged payment event, nothing
for deliveries never made, no record left in progress. ``audit`` runs ``whatsorder audit``.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter

from sqlalchemy import select, text

from faults.provider import Expected
from support import server_env, whatsorder_command
from whatsorder.db.engine import open_database
from whatsorder.db.tables import (
    ledger_entries,
    order_items,
    orders,
    payments,
    webhook_idempotency,
)
from whatsorder.ordering.model import EntryType, order_number


async def _check(database_url: str, expected: Expected) -> list[str]:
    problems: list[str] = []
    engine = open_database(database_url)
    try:
        async with engine.connect() as connection:
            found = (
                await connection.execute(
                    select(orders.c.id, orders.c.source_message_id).where(
                        orders.c.source == "twilio"
                    )
                )
            ).all()
            by_message = Counter(row.source_message_id for row in found)
            number_of = {row.source_message_id: order_number(row.id) for row in found}
            lines: dict[str, list[tuple[str, int]]] = {}
            for row in await connection.execute(
                select(orders.c.source_message_id, order_items.c.sku, order_items.c.quantity).join(
                    order_items, order_items.c.order_id == orders.c.id
                )
            ):
                lines.setdefault(row.source_message_id, []).append((row.sku, row.quantity))
            for sid, (sku, quantity) in expected.orders.items():
                if by_message[sid] != 1:
                    problems.append(f"message {sid} acknowledged, {by_message[sid]} orders")
                elif lines.get(sid) != [(sku, quantity)]:
                    problems.append(
                        f"message {sid}: lines {lines.get(sid)}, ordered {sku} x{quantity}"
                    )
                elif number_of[sid] != expected.order_numbers[sid]:
                    problems.append(
                        f"message {sid}: order {number_of[sid]}, the reply said "
                        f"{expected.order_numbers[sid]}"
                    )
            for sid, count in by_message.items():
                if sid not in expected.orders and sid not in expected.unacknowledged:
                    problems.append(f"an order for message {sid}, which was never acknowledged")
                if count > 1:
                    problems.append(f"message {sid}: {count} orders")

            paid = Counter(
                (row.provider, row.provider_event_id)
                for row in await connection.execute(
                    select(payments.c.provider, payments.c.provider_event_id)
                )
            )
            credits = Counter(
                (row.source, row.source_ref)
                for row in await connection.execute(
                    select(ledger_entries.c.source, ledger_entries.c.source_ref).where(
                        ledger_entries.c.entry_type == EntryType.PAYMENT_CREDIT.value
                    )
                )
            )
            for event_id, (provider, _order, _amount, payment_id) in expected.payments.items():
                if paid[(provider, event_id)] != 1:
                    problems.append(
                        f"{provider} event {event_id}: {paid[(provider, event_id)]} payments"
                    )
                credited = credits[(provider, payment_id)]
                if credited != 1:
                    problems.append(f"{provider} payment {payment_id}: {credited} credits")
            acknowledged_events = set(expected.payments) | expected.unacknowledged
            for (provider, event_id), count in paid.items():
                if event_id not in acknowledged_events:
                    problems.append(
                        f"a payment for {provider} event {event_id}, never acknowledged"
                    )
                if count > 1:
                    problems.append(f"{provider} event {event_id}: {count} payments")
            for (provider, payment_id), count in credits.items():
                if count > 1:
                    problems.append(f"{provider} payment {payment_id}: {count} credits")

            stuck = await connection.scalar(
                select(text("count(*)"))
                .select_from(webhook_idempotency)
                .where(webhook_idempotency.c.status != "completed")
            )
            if stuck:
                problems.append(f"{stuck} idempotency record(s) left in progress")
    finally:
        await engine.dispose()
    return problems


def check_books(database_url: str, expected: Expected) -> list[str]:
    """Every way the database disagrees with what the provider saw; empty when none."""
    return asyncio.run(_check(database_url, expected))


def audit(database_url: str) -> subprocess.CompletedProcess[str]:
    """``whatsorder audit`` on the database, as an operator runs it."""
    return subprocess.run(
        whatsorder_command("audit"),
        env=server_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def restock(database_url: str, units: int) -> None:
    """A delivery of ``units`` more of every product (counted as restocked, as the audit wants)."""
    engine = open_database(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE products SET stock = stock + :n, restocked = restocked + :n"),
                {"n": units},
            )
    finally:
        await engine.dispose()


async def count_rows(database_url: str, table: str) -> int:
    """How many rows ``table`` holds."""
    engine = open_database(database_url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608
    finally:
        await engine.dispose()
