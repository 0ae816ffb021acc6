"""A unit of work in memory: the domain's ports (whatsorder.ordering.ports) over plain dicts.

It drives the service layer without a database, so the domain's rules get tests that run in
milliseconds. It keeps the real one's promises that the rules depend on: nothing commits unless
the service calls ``commit()``, every business key is unique (insert-if-absent answers False,
a plain insert of a taken key fails), and order states move by compare-and-set. It has no
concurrency: races stay with the real-database tests.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import TypeVar

from fake_customers import CustomerBooks, InMemoryConsent, InMemoryCustomers
from whatsorder.ordering.demo import DEMO_CATALOGUE
from whatsorder.ordering.model import (
    Catalogue,
    EntryType,
    Fulfilment,
    LedgerEntry,
    MessageState,
    Order,
    OrderStatus,
    Product,
    message_status_rank,
    order_number,
)
from whatsorder.ordering.notifications import Notification, Recipient
from whatsorder.ordering.payment_model import PayableOrder, PaymentEvent, PaymentException

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class PostedEntry:
    retailer_id: int
    order_id: int | None
    entry: LedgerEntry


@dataclass(frozen=True, slots=True)
class QueuedReply:
    provider: str
    recipient: str
    body: str


@dataclass
class Books:
    """Everything a unit of work can write, as committed (or as being written, inside one)."""

    retailers: dict[str, int] = field(default_factory=dict)  # whatsapp id → retailer id
    retailer_names: dict[int, str] = field(default_factory=dict)
    products: dict[int, Product] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    order_sources: dict[tuple[str, str], int] = field(default_factory=dict)
    ledger: list[PostedEntry] = field(default_factory=list)
    message_states: dict[tuple[str, str], MessageState] = field(default_factory=dict)
    payment_events: dict[tuple[str, str], PaymentEvent] = field(default_factory=dict)
    payment_exceptions: dict[tuple[str, str, str], PaymentException] = field(default_factory=dict)
    outbox: dict[str, QueuedReply] = field(default_factory=dict)  # by idempotency key
    notifications: dict[str, Notification] = field(default_factory=dict)  # the same key space
    # (order id, to state) → (from state, actor): a state is reached once.
    transitions: dict[tuple[int, Fulfilment], tuple[Fulfilment, str]] = field(default_factory=dict)
    languages: dict[int, str] = field(default_factory=dict)  # retailer id → language, if chosen
    dead_letters: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    customers: CustomerBooks = field(default_factory=CustomerBooks)  # language, consent

    @classmethod
    def with_demo_catalogue(cls) -> Books:
        return cls(
            products={
                index: replace(product, id=index)
                for index, product in enumerate(DEMO_CATALOGUE, start=1)
            }
        )

    def stock(self, sku: str) -> int:
        (product,) = (product for product in self.products.values() if product.sku == sku)
        return product.stock

    def entries(self, entry_type: EntryType) -> list[LedgerEntry]:
        return [posted.entry for posted in self.ledger if posted.entry.entry_type is entry_type]

    def balance(self, retailer_id: int) -> int:
        return sum(
            posted.entry.amount for posted in self.ledger if posted.retailer_id == retailer_id
        )


class InMemoryOrdering:
    """`whatsorder.ordering.ports.OrderingRepository` over `Books`."""

    def __init__(self, books: Books) -> None:
        self._books = books

    async def register_retailer(self, whatsapp_id: str, name: str, now: datetime) -> int:
        books = self._books
        if whatsapp_id not in books.retailers:
            books.retailers[whatsapp_id] = len(books.retailers) + 1
            books.retailer_names[books.retailers[whatsapp_id]] = name
        return books.retailers[whatsapp_id]

    async def catalogue(self, skus: Iterable[str] | None = None) -> Catalogue:
        wanted = None if skus is None else set(skus)
        return Catalogue.of(
            sorted(
                (p for p in self._books.products.values() if wanted is None or p.sku in wanted),
                key=lambda product: product.sku,
            )
        )

    async def take_stock(self, product_id: int, quantity: int) -> bool:
        product = self._books.products[product_id]
        if product.stock < quantity:
            return False
        self._books.products[product_id] = replace(product, stock=product.stock - quantity)
        return True

    async def return_stock(self, product_id: int, quantity: int) -> None:
        product = self._books.products[product_id]
        self._books.products[product_id] = replace(product, stock=product.stock + quantity)

    async def add_order(
        self, retailer_id: int, order: Order, source: str, source_message_id: str, now: datetime
    ) -> Order | None:
        books = self._books
        if (source, source_message_id) in books.order_sources:
            return None
        order_id = len(books.orders) + 1
        stored = replace(order, id=order_id, number=order_number(order_id), retailer_id=retailer_id)
        books.orders[order_id] = stored
        books.order_sources[(source, source_message_id)] = order_id
        return stored

    async def order_from_source(self, source: str, source_message_id: str) -> Order | None:
        order_id = self._books.order_sources.get((source, source_message_id))
        return None if order_id is None else self._books.orders[order_id]

    async def order_of_retailer(self, retailer_id: int, order_id: int) -> Order | None:
        order = self._books.orders.get(order_id)
        return order if order is not None and order.retailer_id == retailer_id else None

    async def latest_order(self, retailer_id: int) -> Order | None:
        mine = [
            order_id for order_id, o in self._books.orders.items() if o.retailer_id == retailer_id
        ]
        return self._books.orders[max(mine)] if mine else None

    async def set_order_status(
        self, order_id: int, expected: OrderStatus, new: OrderStatus, now: datetime
    ) -> bool:
        order = self._books.orders.get(order_id)
        if order is None or order.status is not expected:
            return False
        self._books.orders[order_id] = replace(order, status=new)
        return True

    async def add_ledger_entry(
        self, retailer_id: int, order_id: int | None, entry: LedgerEntry, now: datetime
    ) -> None:
        if not _post(self._books, PostedEntry(retailer_id, order_id, entry)):
            raise AssertionError(f"the ledger key of {entry} is taken: a plain insert fails")

    async def advance_message_status(
        self, provider: str, message_id: str, status: str, error_code: str | None, now: datetime
    ) -> bool:
        state = MessageState(message_id, status, error_code)
        return await self.advance_message_statuses(provider, [state], now) == 1

    async def advance_message_statuses(
        self, provider: str, states: Sequence[MessageState], now: datetime
    ) -> int:
        moved = 0
        for state in states:
            before = self._books.message_states.get((provider, state.message_id))
            if before is None or message_status_rank(before.status) < message_status_rank(
                state.status
            ):
                self._books.message_states[(provider, state.message_id)] = state
                moved += 1
        return moved


class InMemoryPayments:
    """`whatsorder.ordering.ports.PaymentRepository` over `Books`."""

    def __init__(self, books: Books) -> None:
        self._books = books

    async def order(self, order_id: int, *, lock: bool = False) -> PayableOrder | None:
        order = self._books.orders.get(order_id)
        if order is None:
            return None
        assert order.retailer_id is not None
        return PayableOrder(order_id, order.retailer_id, order.status, order.total, order.currency)

    async def lock_order(self, order_id: int) -> PayableOrder | None:
        return await self.order(order_id, lock=True)

    async def record_event(self, event: PaymentEvent, order_id: int, now: datetime) -> bool:
        return _add_once(self._books.payment_events, (event.provider, event.event_id), event)

    async def record_exception(
        self,
        event: PaymentEvent,
        order_id: int | None,
        exception: PaymentException,
        now: datetime,
    ) -> bool:
        key = (event.provider, event.event_id, exception.kind.value)
        return _add_once(self._books.payment_exceptions, key, exception)

    async def post_entry(self, order: PayableOrder, entry: LedgerEntry, now: datetime) -> bool:
        return _post(self._books, PostedEntry(order.retailer_id, order.id, entry))

    async def credited(self, provider: str, payment_id: str) -> int | None:
        amounts = self._of_payment(provider, payment_id, EntryType.PAYMENT_CREDIT)
        return sum(amounts) if amounts else None

    async def refunded(self, provider: str, payment_id: str) -> int:
        return -sum(self._of_payment(provider, payment_id, EntryType.REFUND_REVERSAL))

    async def order_money(self, order_id: int) -> tuple[int, int]:
        entries = [posted.entry for posted in self._books.ledger if posted.order_id == order_id]
        credited = sum(e.amount for e in entries if e.entry_type is EntryType.PAYMENT_CREDIT)
        refunded = sum(e.amount for e in entries if e.entry_type is EntryType.REFUND_REVERSAL)
        return credited, -refunded

    def _of_payment(self, provider: str, payment_id: str, entry_type: EntryType) -> list[int]:
        return [
            posted.entry.amount
            for posted in self._books.ledger
            if (posted.entry.source, posted.entry.payment_ref, posted.entry.entry_type)
            == (provider, payment_id, entry_type)
        ]


class InMemoryOutbox:
    """`whatsorder.ordering.ports.OutboxRepository` over `Books`."""

    def __init__(self, books: Books) -> None:
        self._books = books

    async def enqueue(
        self, provider: str, recipient: str, body: str, idempotency_key: str, now: datetime
    ) -> bool:
        if idempotency_key in self._books.notifications:
            return False
        reply = QueuedReply(provider, recipient, body)
        return _add_once(self._books.outbox, idempotency_key, reply)

    async def enqueue_notification(self, notification: Notification, now: datetime) -> bool:
        key = notification.idempotency_key
        if key in self._books.outbox:
            return False
        return _add_once(self._books.notifications, key, notification)


class InMemoryFulfilment:
    """`whatsorder.ordering.ports.FulfilmentRepository` over `Books`."""

    def __init__(self, books: Books) -> None:
        self._books = books

    async def order(self, order_id: int) -> Order | None:
        return self._books.orders.get(order_id)

    async def customer(self, order_id: int) -> Recipient:
        books = self._books
        order = books.orders[order_id]
        (source,) = (source for (source, _), oid in books.order_sources.items() if oid == order_id)
        (whatsapp_id,) = (wid for wid, rid in books.retailers.items() if rid == order.retailer_id)
        assert order.retailer_id is not None
        return Recipient(whatsapp_id, source, books.languages.get(order.retailer_id))

    async def move(
        self, order_id: int, expected: Fulfilment, new: Fulfilment, now: datetime
    ) -> bool:
        order = self._books.orders.get(order_id)
        if order is None or order.fulfilment is not expected:
            return False
        self._books.orders[order_id] = replace(order, fulfilment=new)
        return True

    async def add_transition(
        self, order_id: int, from_state: Fulfilment, to_state: Fulfilment, actor: str, now: datetime
    ) -> bool:
        return _add_once(self._books.transitions, (order_id, to_state), (from_state, actor))


class InMemoryDeadLetters:
    """`whatsorder.ordering.ports.DeadLetterRepository` over `Books`."""

    def __init__(self, books: Books) -> None:
        self._books = books

    async def add(
        self,
        provider: str,
        delivery_key: str,
        reason: str,
        body: str,
        now: datetime,
        payload: str | None = None,
    ) -> bool:
        return _add_once(self._books.dead_letters, (provider, delivery_key), (reason, body))


class FakeUnitOfWork:
    """`whatsorder.ordering.ports.UnitOfWork` in memory: ``books`` holds what was committed."""

    ordering: InMemoryOrdering
    payments: InMemoryPayments
    outbox: InMemoryOutbox
    dead_letters: InMemoryDeadLetters
    customers: InMemoryCustomers
    consent: InMemoryConsent
    fulfilment: InMemoryFulfilment

    def __init__(self, books: Books | None = None) -> None:
        self.books = Books.with_demo_catalogue() if books is None else books
        self.commits = 0
        self._working: Books | None = None

    async def __aenter__(self) -> FakeUnitOfWork:
        self._working = copy.deepcopy(self.books)
        self.ordering = InMemoryOrdering(self._working)
        self.payments = InMemoryPayments(self._working)
        self.outbox = InMemoryOutbox(self._working)
        self.dead_letters = InMemoryDeadLetters(self._working)
        self.customers = InMemoryCustomers(self._working.customers)
        self.consent = InMemoryConsent(self._working.customers)
        self.fulfilment = InMemoryFulfilment(self._working)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._working = None  # whatever was not committed is gone

    async def commit(self) -> None:
        assert self._working is not None, "commit() outside 'async with uow'"
        self.books = copy.deepcopy(self._working)
        self.commits += 1


def _post(books: Books, posted: PostedEntry) -> bool:
    """Insert-if-absent on the ledger's business key ``(source, source_ref, entry_type)``."""
    entry = posted.entry
    key = (entry.source, entry.source_ref, entry.entry_type)
    if any((p.entry.source, p.entry.source_ref, p.entry.entry_type) == key for p in books.ledger):
        return False
    books.ledger.append(posted)
    return True


def _add_once(table: dict[K, V], key: K, value: V) -> bool:
    """Insert-if-absent on ``key``; True if it was absent."""
    if key in table:
        return False
    table[key] = value
    return True
