"""The audit of the books: every invariant the data must hold, checked by reading it.

Stock, order totals, the ledger against the orders, business keys that must be unique, answers
given to the right retailer, dead letters and replies kept once, the money against what the
providers reported (``payment_audit``) and fulfilment (``fulfilment_audit``). Read-only: it
never repairs what it finds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.fulfilment_audit import fulfilment_audit
from whatsorder.db.outbox import replies_sent_twice
from whatsorder.db.payment_audit import payment_audit
from whatsorder.db.tables import (
    dead_letters,
    ledger_entries,
    order_items,
    orders,
    payments,
    products,
    webhook_idempotency,
)
from whatsorder.ordering.model import EntryType, OrderStatus, order_number

Check = Callable[[AsyncConnection], Awaitable[list[str]]]


async def audit(connection: AsyncConnection) -> list[str]:
    """Every violated invariant of the books, in words; an empty list means all hold.

    Stock (initial - ordered + restocked), order totals, one debit per order (and a reversal if
    cancelled), unique business keys, answers given to the right retailer, dead letters kept
    once, replies accepted once, the money against what the providers reported
    (payment_audit.py), and fulfilment against its transitions and notifications
    (fulfilment_audit.py).
    """
    checks: tuple[Check, ...] = (
        _stock_off_its_movements,
        _totals_off_their_lines,
        _ledger_off_its_orders,
        _business_keys_shared,
        _ledger_entries_of_other_retailers,
        _answers_of_other_retailers,
        _dead_letters_kept_twice,
        replies_sent_twice,
        payment_audit,
        fulfilment_audit,
    )
    problems: list[str] = []
    for check in checks:
        problems.extend(await check(connection))
    return problems


async def _stock_off_its_movements(connection: AsyncConnection) -> list[str]:
    """A product's stock is its initial stock, less what live orders hold, plus restocks."""
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
    problems: list[str] = []
    for prod in prods:
        expected = prod.initial_stock - prod.ordered + prod.restocked
        if prod.stock != expected:
            problems.append(
                f"stock of {prod.sku} is {prod.stock}, expected {expected} "
                f"(initial {prod.initial_stock} - ordered {prod.ordered}"
                f" + restocked {prod.restocked})"
            )
    return problems


async def _totals_off_their_lines(connection: AsyncConnection) -> list[str]:
    """An order's total is the sum of its lines."""
    line_totals = (
        select(
            order_items.c.order_id,
            func.sum(order_items.c.quantity * order_items.c.unit_price).label("lines_total"),
        )
        .group_by(order_items.c.order_id)
        .subquery()
    )
    rows = await connection.execute(
        select(orders.c.id, orders.c.total, func.coalesce(line_totals.c.lines_total, 0).label("t"))
        .outerjoin(line_totals, line_totals.c.order_id == orders.c.id)
        .where(orders.c.total != func.coalesce(line_totals.c.lines_total, 0))
    )
    return [f"{order_number(tot.id)} total {tot.total} != its lines' sum {tot.t}" for tot in rows]


async def _ledger_off_its_orders(connection: AsyncConnection) -> list[str]:
    """The ledger says exactly what the orders say: one debit each, one reversal if cancelled."""
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
    problems: list[str] = []
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
    return problems


async def _business_keys_shared(connection: AsyncConnection) -> list[str]:
    """One order per source message, one payment per provider event."""
    keys = (
        (orders.c.source, orders.c.source_message_id, "orders share the source message"),
        (payments.c.provider, payments.c.provider_event_id, "payments share the event"),
    )
    problems: list[str] = []
    for namespace, key, shared in keys:
        rows = await connection.execute(
            select(namespace, key, func.count().label("n"))
            .group_by(namespace, key)
            .having(func.count() > 1)
        )
        problems.extend(f"{row.n} {shared} {row[0]}:{row[1]}" for row in rows)
    return problems


async def _ledger_entries_of_other_retailers(connection: AsyncConnection) -> list[str]:
    """A ledger entry is on the retailer of the order it belongs to."""
    rows = await connection.execute(
        select(ledger_entries.c.order_id, ledger_entries.c.retailer_id)
        .join(orders, orders.c.id == ledger_entries.c.order_id)
        .where(orders.c.retailer_id != ledger_entries.c.retailer_id)
    )
    return [
        f"a ledger entry of {order_number(row.order_id)} is on another retailer" for row in rows
    ]


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
