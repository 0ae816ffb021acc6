"""The ordering data on one connection: rows in, domain objects out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.dialect import upsert
from whatsorder.db.tables import (
    ledger_entries,
    message_statuses,
    order_items,
    orders,
    products,
    retailers,
)
from whatsorder.ordering.model import (
    MESSAGE_STATUS_RANK,
    Catalogue,
    Fulfilment,
    LedgerEntry,
    MessageState,
    Order,
    OrderLine,
    OrderStatus,
    Product,
    order_number,
)


class OrderingRepository:
    """Reads and writes of the ordering domain, all inside the caller's transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def register_retailer(self, whatsapp_id: str, name: str, now: datetime) -> int:
        """The retailer's id, registering it on its first message (atomic insert-if-absent)."""
        await self._connection.execute(
            upsert(self._connection, retailers)
            .values(whatsapp_id=whatsapp_id, name=name, created_at=now)
            .on_conflict_do_nothing(index_elements=["whatsapp_id"])
        )
        found = await self._connection.scalar(
            select(retailers.c.id).where(retailers.c.whatsapp_id == whatsapp_id)
        )
        assert found is not None
        return int(found)

    async def catalogue(self, skus: Iterable[str] | None = None) -> Catalogue:
        statement = select(products).order_by(products.c.sku)
        if skus is not None:
            statement = statement.where(products.c.sku.in_(list(skus)))
        rows = (await self._connection.execute(statement)).mappings()
        return Catalogue.of(
            Product(
                id=row["id"],
                sku=row["sku"],
                name=row["name"],
                unit_price=row["unit_price"],
                currency=row["currency"],
                stock=row["stock"],
            )
            for row in rows
        )

    async def take_stock(self, product_id: int, quantity: int) -> bool:
        """Decrement stock if enough is left, atomically; False when it is not."""
        result = await self._connection.execute(
            update(products)
            .where(products.c.id == product_id, products.c.stock >= quantity)
            .values(stock=products.c.stock - quantity)
        )
        return result.rowcount == 1

    async def return_stock(self, product_id: int, quantity: int) -> None:
        await self._connection.execute(
            update(products)
            .where(products.c.id == product_id)
            .values(stock=products.c.stock + quantity)
        )

    async def add_order(
        self, retailer_id: int, order: Order, source: str, source_message_id: str, now: datetime
    ) -> Order | None:
        """Insert the order and its lines; None if its source message has an order already.

        Insert-if-absent on the business key: a copy of the message that came under another
        idempotency key and committed first is found (PostgreSQL waits for it), not violated.
        """
        order_id = await self._connection.scalar(
            upsert(self._connection, orders)
            .values(
                retailer_id=retailer_id,
                status=order.status.value,
                currency=order.currency,
                total=order.total,
                source=source,
                source_message_id=source_message_id,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["source", "source_message_id"])
            .returning(orders.c.id)
        )
        if order_id is None:
            return None
        await self._connection.execute(
            order_items.insert(),
            [
                {
                    "order_id": order_id,
                    "product_id": line.product_id,
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                }
                for line in order.lines
            ],
        )
        return Order(
            lines=order.lines,
            currency=order.currency,
            status=order.status,
            id=order_id,
            number=order_number(order_id),
            retailer_id=retailer_id,
        )

    async def order_from_source(self, source: str, source_message_id: str) -> Order | None:
        return await self._one_order(
            (orders.c.source == source) & (orders.c.source_message_id == source_message_id)
        )

    async def order_of_retailer(self, retailer_id: int, order_id: int) -> Order | None:
        return await self._one_order(
            (orders.c.retailer_id == retailer_id) & (orders.c.id == order_id)
        )

    async def latest_order(self, retailer_id: int) -> Order | None:
        latest = await self._connection.scalar(
            select(func.max(orders.c.id)).where(orders.c.retailer_id == retailer_id)
        )
        if latest is None:
            return None
        return await self._one_order(orders.c.id == latest)

    async def _one_order(self, condition: object) -> Order | None:
        return await one_order(self._connection, condition)

    async def set_order_status(
        self, order_id: int, expected: OrderStatus, new: OrderStatus, now: datetime
    ) -> bool:
        """Move an order from ``expected`` to ``new``; False if it was no longer ``expected``."""
        values: dict[str, object] = {"status": new.value}
        if new is OrderStatus.CANCELLED:
            values["cancelled_at"] = now
        result = await self._connection.execute(
            update(orders)
            .where(orders.c.id == order_id, orders.c.status == expected.value)
            .values(**values)
        )
        return result.rowcount == 1

    async def add_ledger_entry(
        self, retailer_id: int, order_id: int | None, entry: LedgerEntry, now: datetime
    ) -> None:
        await self._connection.execute(
            ledger_entries.insert().values(ledger_row(retailer_id, order_id, entry, now))
        )

    async def advance_message_status(
        self, provider: str, message_id: str, status: str, error_code: str | None, now: datetime
    ) -> bool:
        """Record ``status`` unless the message is already as far or further; True if it was."""
        state = MessageState(message_id, status, error_code)
        return await self.advance_message_statuses(provider, [state], now) == 1

    async def advance_message_statuses(
        self, provider: str, states: Sequence[MessageState], now: datetime
    ) -> int:
        """Record each state unless its message is already as far or further; how many were.

        One conditional upsert for all: a lower state racing a higher one can never win. A
        statement may touch a row once, so ``states`` holds one state per message (see
        `furthest_states`).
        """
        if not states:
            return 0
        statement = upsert(self._connection, message_statuses).values(
            [
                {
                    "provider": provider,
                    "message_id": state.message_id,
                    "status": state.status,
                    "error_code": state.error_code,
                    "updated_at": now,
                }
                for state in states
            ]
        )
        new = statement.excluded
        result = await self._connection.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "message_id"],
                set_={"status": new.status, "error_code": new.error_code, "updated_at": now},
                where=_rank(message_statuses.c.status) < _rank(new.status),
            )
        )
        return int(result.rowcount)

    async def upsert_products(self, catalogue: Sequence[Product]) -> int:
        """Add the products that are missing; existing ones keep their stock. Returns how many."""
        added = 0
        for product in catalogue:
            result = await self._connection.execute(
                upsert(self._connection, products)
                .values(
                    sku=product.sku,
                    name=product.name,
                    unit_price=product.unit_price,
                    currency=product.currency,
                    initial_stock=product.stock,
                    restocked=0,
                    stock=product.stock,
                )
                .on_conflict_do_nothing(index_elements=["sku"])
            )
            added += result.rowcount
        return added


async def one_order(connection: AsyncConnection, condition: object) -> Order | None:
    """The order matching ``condition`` with its lines; None if there is none."""
    row = (
        (await connection.execute(select(orders).where(condition)))  # type: ignore[arg-type]
        .mappings()
        .first()
    )
    if row is None:
        return None
    item_rows = (
        await connection.execute(
            select(order_items)
            .where(order_items.c.order_id == row["id"])
            .order_by(order_items.c.id)
        )
    ).mappings()
    lines = tuple(
        OrderLine(
            item["product_id"], item["sku"], item["name"], item["quantity"], item["unit_price"]
        )
        for item in item_rows
    )
    return Order(
        lines=lines,
        currency=row["currency"],
        status=OrderStatus(row["status"]),
        id=row["id"],
        number=order_number(row["id"]),
        retailer_id=row["retailer_id"],
        fulfilment=Fulfilment(row["fulfilment"]),
    )


def ledger_row(
    retailer_id: int, order_id: int | None, entry: LedgerEntry, now: datetime
) -> dict[str, object]:
    """The ``ledger_entries`` row of ``entry`` on a retailer's account."""
    return {
        "retailer_id": retailer_id,
        "order_id": order_id,
        "entry_type": entry.entry_type.value,
        "amount": entry.amount,
        "currency": entry.currency,
        "source": entry.source,
        "source_ref": entry.source_ref,
        "payment_ref": entry.payment_ref,
        "created_at": now,
    }


def _rank(status: ColumnElement[str]) -> ColumnElement[int]:
    """`message_status_rank` in SQL: unknown states rank lowest."""
    return case(*((status == name, rank) for name, rank in MESSAGE_STATUS_RANK.items()), else_=-1)
