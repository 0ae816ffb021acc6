"""What the operator console reads and changes, each change with its line in the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.clock import utcnow
from whatsorder.db import operators as operator_rows
from whatsorder.db.console_fulfilment import notifications_of, transitions_of
from whatsorder.db.console_health import bounded_count, counted
from whatsorder.db.console_replies import order_replies
from whatsorder.db.tables import (
    dead_letters,
    inbound_deliveries,
    ledger_entries,
    order_items,
    orders,
    payment_links,
    payments,
    products,
    retailers,
    webhook_idempotency,
)
from whatsorder.operators import StaleEdit
from whatsorder.ordering.fulfilment import next_actions
from whatsorder.ordering.model import Fulfilment, order_id_from_number, order_number

PAGE_SIZE = 50
DEAD_LETTER_TYPE = "meta_dead_letter"  # whatsorder.providers.meta.WEBHOOK_TYPE_DEAD_LETTER


class ConsoleQueries:
    def __init__(self, database: AsyncEngine) -> None:
        self._database = database

    async def operator(self, name: str) -> dict[str, Any] | None:
        async with self._database.connect() as connection:
            return await operator_rows.find_operator(connection, name)

    async def signed_in(self, name: str, address: str) -> None:
        now = utcnow()
        async with self._database.begin() as connection:
            await operator_rows.note_sign_in(connection, name, now)
            await operator_rows.record_action(
                connection, operator=name, action="sign-in", address=address, now=now
            )

    async def note(self, name: str, action: str, address: str, target: str | None = None) -> None:
        async with self._database.begin() as connection:
            await operator_rows.record_action(
                connection,
                operator=name,
                action=action,
                target=target,
                address=address,
                now=utcnow(),
            )

    async def orders(
        self,
        *,
        status: str | None = None,
        fulfilment: str | None = None,
        retailer_id: int | None = None,
        search: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        page: int = 1,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of orders, newest first, and how many match in all. ``search``: an order
        number, the last digits of a phone number, or part of a retailer's name; ``since`` and
        ``before``: placed at or after, and before, these moments."""
        conditions = []
        if status:
            conditions.append(orders.c.status == status)
        if fulfilment:
            conditions.append(orders.c.fulfilment == fulfilment)
        if retailer_id is not None:
            conditions.append(orders.c.retailer_id == retailer_id)
        if since is not None:
            conditions.append(orders.c.created_at >= since)
        if before is not None:
            conditions.append(orders.c.created_at < before)
        if search:
            term = search.strip()
            number = order_id_from_number(term.upper()) if term.upper().startswith("ORD-") else None
            if number is not None:
                conditions.append(orders.c.id == number)
            else:
                digits = "".join(char for char in term if char.isdigit())
                matching = select(retailers.c.id).where(
                    or_(
                        retailers.c.whatsapp_id.endswith(digits) if digits else false(),
                        retailers.c.name.ilike(f"%{term}%"),
                    )
                )
                conditions.append(orders.c.retailer_id.in_(matching))
        # The page's ids first, from orders alone (an index walk, however deep the page), then
        # those 50 orders with their retailers' names.
        ids = (
            select(orders.c.id)
            .where(*conditions)
            .order_by(orders.c.id.desc())
            .limit(PAGE_SIZE)
            .offset((max(1, page) - 1) * PAGE_SIZE)
        )
        listing = (
            select(orders, retailers.c.name.label("retailer"))
            .join(retailers, retailers.c.id == orders.c.retailer_id)
            .where(orders.c.id.in_(ids.scalar_subquery()))
            .order_by(orders.c.id.desc())
        )
        counting = select(func.count()).select_from(orders).where(*conditions)
        async with self._database.connect() as connection:
            rows = [dict(row._mapping) for row in await connection.execute(listing)]
            total = int(await connection.scalar(counting) or 0)
        for row in rows:
            row["number"] = order_number(row["id"])
        return rows, total

    async def retailer_name(self, retailer_id: int) -> str | None:
        """The name of the retailer the orders list is filtered by, if there is one."""
        statement = select(retailers.c.name).where(retailers.c.id == retailer_id)
        async with self._database.connect() as connection:
            name = await connection.scalar(statement)
        return None if name is None else str(name)

    async def products(self) -> list[dict[str, Any]]:
        async with self._database.connect() as connection:
            rows = await connection.execute(select(products).order_by(products.c.sku))
            return [dict(row._mapping) for row in rows]

    async def edit_product(
        self,
        sku: str,
        *,
        seen: dict[str, int],
        wanted: dict[str, int],
        operator: str,
        address: str,
    ) -> None:
        """Set price and stock if they are still what the operator's page showed (``seen``)."""
        now: datetime = utcnow()
        async with self._database.begin() as connection:
            changed = await connection.execute(
                update(products)
                .where(
                    products.c.sku == sku,
                    products.c.unit_price == seen["unit_price"],
                    products.c.stock == seen["stock"],
                )
                .values(unit_price=wanted["unit_price"], stock=wanted["stock"])
            )
            if changed.rowcount != 1:
                raise StaleEdit(
                    f"{sku} changed since this page was loaded (an order, or another operator): "
                    "nothing was saved. The page now shows its current price and stock; "
                    "make your change again."
                )
            await operator_rows.record_action(
                connection,
                operator=operator,
                action="product.edit",
                target=sku,
                before=seen,
                after=wanted,
                address=address,
                now=now,
            )

    async def order_detail(self, number: str) -> dict[str, Any] | None:
        """An order with its lines, ledger entries, payments, every delivery that touched it,
        the replies sent about it, its fulfilment (transitions, notifications, next steps) and its
        payment links."""
        order_id = order_id_from_number(number)
        if order_id is None:
            return None
        async with self._database.connect() as connection:
            found = (
                await connection.execute(
                    select(orders, retailers.c.name.label("retailer"), retailers.c.whatsapp_id)
                    .join(retailers, retailers.c.id == orders.c.retailer_id)
                    .where(orders.c.id == order_id)
                )
            ).first()
            if found is None:
                return None
            detail = dict(found._mapping)
            detail["number"] = order_number(order_id)
            for name, table in (
                ("lines", order_items),
                ("ledger", ledger_entries),
                ("payments", payments),
                ("payment_links", payment_links),
            ):
                rows = await connection.execute(
                    select(table).where(table.c.order_id == order_id).order_by(table.c.id)
                )
                detail[name] = [dict(row._mapping) for row in rows]
            records = webhook_idempotency
            touched = (
                select(
                    inbound_deliveries,
                    records.c.response_status,
                )
                .join(
                    records,
                    (records.c.webhook_type == inbound_deliveries.c.webhook_type)
                    & (records.c.idempotency_key == inbound_deliveries.c.idempotency_key),
                )
                .where(records.c.order_id == order_id)
                .order_by(inbound_deliveries.c.id)
            )
            detail["deliveries"] = [dict(row._mapping) for row in await connection.execute(touched)]
            detail["replies"] = await order_replies(
                connection, order_id, detail["source"], detail["source_message_id"]
            )
            detail["transitions"] = await transitions_of(connection, order_id)
            detail["notifications"] = await notifications_of(connection, order_id)
        detail["next_actions"] = next_actions(Fulfilment(detail["fulfilment"]))
        return detail

    async def deliveries(
        self, *, webhook_type: str | None, outcome: str | None, page: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One page of the inbox, newest first, with each key's stored answer and its order;
        and how many deliveries match, counted up to ``COUNT_BOUND`` (a million would take
        longer to count than the page may: docs/benchmarks.md, the console's pages)."""
        records = webhook_idempotency
        conditions = []
        if webhook_type:
            conditions.append(inbound_deliveries.c.webhook_type == webhook_type)
        if outcome:
            conditions.append(inbound_deliveries.c.outcome == outcome)
        joined = inbound_deliveries.outerjoin(
            records,
            (records.c.webhook_type == inbound_deliveries.c.webhook_type)
            & (records.c.idempotency_key == inbound_deliveries.c.idempotency_key),
        ).outerjoin(
            # A dead letter's delivery is keyed by the row's own key: its re-drive, if any.
            dead_letters,
            (inbound_deliveries.c.webhook_type == DEAD_LETTER_TYPE)
            & (dead_letters.c.provider == "meta")
            & (dead_letters.c.delivery_key == inbound_deliveries.c.idempotency_key),
        )
        listing = (
            select(
                inbound_deliveries,
                records.c.order_id,
                records.c.response_status,
                records.c.response_body,
                dead_letters.c.id.label("dead_letter_id"),
                dead_letters.c.redrive_state,
                dead_letters.c.redrive_result,
            )
            .select_from(joined)
            .where(*conditions)
            .order_by(inbound_deliveries.c.id.desc())
            .limit(PAGE_SIZE)
            .offset((max(1, page) - 1) * PAGE_SIZE)
        )
        matching = select(inbound_deliveries.c.id).where(*conditions)
        async with self._database.connect() as connection:
            rows = [dict(row._mapping) for row in await connection.execute(listing)]
            total = counted(await bounded_count(connection, matching))
        for row in rows:
            body = row.pop("response_body")
            row["answer"] = None if body is None else bytes(body)[:300].decode("utf-8", "replace")
            row["order"] = None if row["order_id"] is None else order_number(row["order_id"])
        return rows, total

    async def audit_trail(self, limit: int = 200) -> list[dict[str, Any]]:
        async with self._database.connect() as connection:
            return await operator_rows.recent_actions(connection, limit)
