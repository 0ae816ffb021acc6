"""The shop the console benchmark builds: who, what and when, as rows of every table.

Seeded and derived from the row's number, so every run builds the same shop: orders in time
order over the last 90 days, their lines, ledger entries, payments (paid orders), Meta replies
and their statuses, then idempotency records (one per order's message and per payment event,
status callbacks up to the number asked) and a delivery per record (every 20th replayed).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from whatsorder.ordering.demo import DEMO_CATALOGUE
from whatsorder.ordering.model import order_number

DAYS = 90
DEAD_LETTERS = 10_000  # kept over the last seven weeks, a quarter of them failed deliveries
Row = tuple[Any, ...]
Rows = Callable[[], Iterable[Row]]


@dataclass
class Shop:
    """What was built, and the handles the page timings need (an order, a key, a retailer)."""

    orders: int
    records: int
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def retailers(self) -> int:
        return max(10, self.orders // 50)

    def placed_at(self, n: int) -> datetime:
        """Order ``n`` (1 … orders) in time order over the last 90 days."""
        return self.now - timedelta(days=DAYS) * (1 - n / self.orders)

    def status(self, n: int) -> str:
        return ("paid", "placed", "placed", "cancelled", "placed")[(n * 7 + n // 5) % 5]

    def source(self, n: int) -> tuple[str, str]:
        if n % 5 < 2:
            return "meta", f"wamid.bench{n:014d}"
        return "twilio", f"SM{n:032x}"

    def phone(self, retailer: int) -> str:
        return f"whatsapp:+9198{retailer * 7919 % 100_000_000:08d}"

    def retailer_of(self, n: int) -> int:
        return (n * 2_654_435_761) % self.retailers + 1


def tables(shop: Shop) -> dict[str, tuple[tuple[str, ...], Rows]]:
    rng_seed = 20261203
    products = [(index + 1, product) for index, product in enumerate(DEMO_CATALOGUE)]

    def lines(n: int) -> list[tuple[int, Any, int]]:
        rng = random.Random(rng_seed + n)
        return [
            (pid, product, rng.randint(1, 5)) for pid, product in rng.sample(products, n % 3 + 1)
        ]

    def total(n: int) -> int:
        return sum(product.unit_price * quantity for _pid, product, quantity in lines(n))

    def retailers() -> Iterator[Row]:
        for r in range(1, shop.retailers + 1):
            yield r, shop.phone(r), f"Kirana {r:05d}", shop.now - timedelta(days=DAYS + 1)

    def orders() -> Iterator[Row]:
        for n in range(1, shop.orders + 1):
            at, status = shop.placed_at(n), shop.status(n)
            cancelled = at + timedelta(hours=1) if status == "cancelled" else None
            yield (n, shop.retailer_of(n), status, "INR", total(n), *shop.source(n), at, cancelled)

    def items() -> Iterator[Row]:
        for n in range(1, shop.orders + 1):
            for pid, product, quantity in lines(n):
                yield n, pid, product.sku, product.name, quantity, product.unit_price

    def ledger() -> Iterator[Row]:
        for n in range(1, shop.orders + 1):
            at, number, amount = shop.placed_at(n), order_number(n), total(n)
            retailer = shop.retailer_of(n)
            yield retailer, n, "order_debit", -amount, "INR", "order", number, at, None
            if shop.status(n) == "paid":
                ref = f"pay_{n:012d}"
                yield retailer, n, "payment_credit", amount, "INR", "razorpay", ref, at, ref

    def payments() -> Iterator[Row]:
        for n in range(1, shop.orders + 1):
            if shop.status(n) == "paid":
                at = shop.placed_at(n) + timedelta(minutes=5)
                yield (
                    n,
                    "razorpay",
                    f"evt_{n:012d}",
                    f"pay_{n:012d}",
                    total(n),
                    "INR",
                    "captured",
                    at,
                )

    def replies() -> Iterator[Row]:
        for n in range(1, shop.orders + 1):
            source, wamid = shop.source(n)
            if source == "meta":
                at = shop.placed_at(n)
                yield (
                    "meta",
                    shop.phone(shop.retailer_of(n))[10:],
                    f"Order {order_number(n)} placed.",
                    f"reply:{wamid}",
                    "sent",
                    1,
                    at,
                    None,
                    f"wamid.reply{n:014d}",
                    at,
                    at,
                    1,
                )

    def statuses() -> Iterator[Row]:
        for n in range(1, shop.orders + 1):
            if shop.source(n)[0] == "meta":
                state = ("read", "delivered", "read", "failed")[n % 4]
                code = "131026" if state == "failed" else None
                yield (
                    "meta",
                    f"wamid.reply{n:014d}",
                    state,
                    code,
                    shop.placed_at(n) + timedelta(minutes=2),
                )

    def records() -> Iterator[Row]:
        for n, (kind, key, order, at) in enumerate(_record_keys(shop), start=1):
            flying = n % 100_000 == 0
            yield (
                kind,
                key,
                "f" * 64,
                "in_progress" if flying else "completed",
                1,
                at + timedelta(seconds=30) if flying else None,
                None,
                None if flying else 200,
                None if flying else b'{"order":null}',
                None if flying else '[["content-type","application/json"]]',
                "127.0.0.1",
                at,
                None if flying else at,
                at + timedelta(days=DAYS + 30),
                None if order is None else shop.retailer_of(order),
                order,
            )

    def deliveries() -> Iterator[Row]:
        for n, (kind, key, _order, at) in enumerate(_record_keys(shop), start=1):
            yield kind, key, "new", 200, None, at
            if n % 20 == 0:
                yield kind, key, "replayed", 200, None, at + timedelta(seconds=20)

    def kept() -> Iterator[Row]:  # dead letters: Meta's unreadable parts, failed deliveries
        for n in range(1, DEAD_LETTERS + 1):
            meta = n % 4 != 0
            state, result = (None, None) if n % 3 else ("failed", "rejected again: no items")
            yield (
                "meta" if meta else "twilio",
                "This wamid was processed before with other content; this copy was not."
                if meta
                else "Its processing failed with an unexpected error (IntegrityError).",
                '{"entry":"(masked)"}',
                shop.now - timedelta(minutes=7 * n),
                f"{n:064x}" if meta else f"twilio_inbound:SMdl{n:030x}",
                '{"object":"whatsapp_business_account","entry":[]}',
                state,
                None if state is None else shop.now - timedelta(minutes=7 * n - 1),
                None if state is None else "bench",
                result,
            )

    def audit() -> Iterator[Row]:
        for n in range(1, 2_001):
            yield "bench", "sign-in", None, None, None, "127.0.0.1", shop.now - timedelta(hours=n)

    def exceptions() -> Iterator[Row]:
        for n in range(1, 201):
            resolved = shop.now - timedelta(hours=n) if n % 2 else None
            yield (
                "razorpay",
                f"evt_x{n:08d}",
                n,
                "amount_mismatch",
                1000,
                900,
                "INR",
                "Paid less than the order's total.",
                shop.now - timedelta(days=1, hours=n),
                resolved,
                "bench" if resolved else None,
                "Refunded." if resolved else None,
            )

    def hourly() -> Iterator[Row]:
        first = shop.now.replace(minute=0, second=0) - timedelta(hours=47)
        for hour in range(48):
            for kind in ("twilio_inbound", "meta_message", "meta_status"):
                for outcome, count in (("new", 400), ("replayed", 20), ("mismatch", 1)):
                    yield first + timedelta(hours=hour), kind, outcome, count

    columns = {
        "retailers": ("id whatsapp_id name created_at", retailers),
        "orders": (
            "id retailer_id status currency total source source_message_id created_at cancelled_at",
            orders,
        ),
        "order_items": ("order_id product_id sku name quantity unit_price", items),
        "ledger_entries": (
            "retailer_id order_id entry_type amount currency source source_ref created_at "
            "payment_ref",
            ledger,
        ),
        "payments": (
            "order_id provider provider_event_id provider_payment_id amount currency status "
            "created_at",
            payments,
        ),
        "outbox_messages": (
            "provider recipient body idempotency_key status attempts next_attempt_at "
            "last_error provider_message_id created_at sent_at sends",
            replies,
        ),
        "message_statuses": ("provider message_id status error_code updated_at", statuses),
        "webhook_idempotency": (
            "webhook_type idempotency_key fingerprint status epoch locked_until request_body "
            "response_status response_body response_headers source_ip created_at completed_at "
            "expires_at retailer_id order_id",
            records,
        ),
        "inbound_deliveries": (
            "webhook_type idempotency_key outcome http_status detail received_at",
            deliveries,
        ),
        "operator_actions": ("operator action target before after address at", audit),
        "dead_letters": (
            "provider reason body received_at delivery_key payload redrive_state redriven_at "
            "redriven_by redrive_result",
            kept,
        ),
        "payment_exceptions": (
            "provider provider_event_id order_id kind expected_amount received_amount "
            "currency detail created_at resolved_at resolved_by resolution",
            exceptions,
        ),
        "idempotency_stats": ("hour webhook_type outcome count", hourly),
    }
    return {name: (tuple(names.split()), rows) for name, (names, rows) in columns.items()}


def _record_keys(shop: Shop) -> Iterator[tuple[str, str, int | None, datetime]]:
    """The records' (webhook type, key, order, created): one per order's message, one per
    payment event, then status callbacks (no order) up to ``shop.records``."""
    made = 0
    for n in range(1, shop.orders + 1):
        if made >= shop.records:
            return
        source, message = shop.source(n)
        kind = "meta_message" if source == "meta" else "twilio_inbound"
        yield kind, message, n, shop.placed_at(n)
        made += 1
        if shop.status(n) == "paid" and made < shop.records:
            yield "razorpay", f"evt_{n:012d}", n, shop.placed_at(n) + timedelta(minutes=5)
            made += 1
    for m in range(shop.records - made):
        at = shop.now - timedelta(days=DAYS) * (1 - m / max(1, shop.records - made))
        if m % 2:
            yield "twilio_status", f"SMs{m:031x}:delivered", None, at
        else:
            yield "meta_status", f"statuses:{m:064x}", None, at
