"""The domain's ports: what the service layer needs of storage, and nothing about how.

The services are typed against these protocols; ``whatsorder.db`` implements them on SQL and
``tests/fake_uow.py`` in memory. Every write that guards exactly-once is insert-if-absent on a
business key and answers whether it wrote (docs/architecture.md §1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from whatsorder.ordering.customer import ConsentChange, Customer
from whatsorder.ordering.model import (
    Catalogue,
    Fulfilment,
    LedgerEntry,
    MessageState,
    Order,
    OrderStatus,
)
from whatsorder.ordering.notifications import Notification, Recipient
from whatsorder.ordering.payment_model import (
    PayableOrder,
    PaymentEvent,
    PaymentException,
    StoredLink,
)


class OrderingRepository(Protocol):
    """Retailers, the catalogue's stock, orders, their ledger entries and message states."""

    async def register_retailer(self, whatsapp_id: str, name: str, now: datetime) -> int:
        """The retailer's id, registering it on its first message (insert-if-absent)."""
        ...

    async def catalogue(self, skus: Iterable[str] | None = None) -> Catalogue:
        """The products named (all of them when ``skus`` is None)."""
        ...

    async def take_stock(self, product_id: int, quantity: int) -> bool:
        """Decrement stock if enough is left, atomically; False when it is not."""
        ...

    async def return_stock(self, product_id: int, quantity: int) -> None: ...

    async def add_order(
        self, retailer_id: int, order: Order, source: str, source_message_id: str, now: datetime
    ) -> Order | None:
        """The order as stored; None if its source message has an order already."""
        ...

    async def order_from_source(self, source: str, source_message_id: str) -> Order | None: ...

    async def order_of_retailer(self, retailer_id: int, order_id: int) -> Order | None: ...

    async def latest_order(self, retailer_id: int) -> Order | None: ...

    async def set_order_status(
        self, order_id: int, expected: OrderStatus, new: OrderStatus, now: datetime
    ) -> bool:
        """Move an order from ``expected`` to ``new``; False if it was no longer ``expected``."""
        ...

    async def add_ledger_entry(
        self, retailer_id: int, order_id: int | None, entry: LedgerEntry, now: datetime
    ) -> None: ...

    async def advance_message_status(
        self, provider: str, message_id: str, status: str, error_code: str | None, now: datetime
    ) -> bool:
        """Record ``status`` unless the message is already as far or further; True if it was."""
        ...

    async def advance_message_statuses(
        self, provider: str, states: Sequence[MessageState], now: datetime
    ) -> int:
        """Each state (one per message) unless already as far or further; how many were."""
        ...


class PaymentRepository(Protocol):
    """Payment events, payment exceptions and the ledger as payments see it."""

    async def order(self, order_id: int, *, lock: bool = False) -> PayableOrder | None:
        """The order as a payment sees it; ``lock`` holds it until the unit of work ends."""
        ...

    async def lock_order(self, order_id: int) -> PayableOrder | None:
        """The order, locked: events about one order take turns, whatever they are."""
        ...

    async def record_event(self, event: PaymentEvent, order_id: int, now: datetime) -> bool:
        """Note the event once per ``(provider, event id)``; True if it is new."""
        ...

    async def record_exception(
        self,
        event: PaymentEvent,
        order_id: int | None,
        exception: PaymentException,
        now: datetime,
    ) -> bool:
        """Note what an operator must look at, once per event and kind; True if it is new."""
        ...

    async def post_entry(self, order: PayableOrder, entry: LedgerEntry, now: datetime) -> bool:
        """Post ``entry`` unless its ``(source, source_ref, entry_type)`` exists; True if new."""
        ...

    async def credited(self, provider: str, payment_id: str) -> int | None:
        """What the ledger holds as this payment's credit; None when it holds none."""
        ...

    async def refunded(self, provider: str, payment_id: str) -> int:
        """How much of this payment the ledger shows refunded (a positive amount)."""
        ...

    async def order_money(self, order_id: int) -> tuple[int, int]:
        """(credited, refunded) on the order, all its payments together, both positive."""
        ...


class FulfilmentRepository(Protocol):
    """Orders' fulfilment states and the transitions that moved them."""

    async def order(self, order_id: int) -> Order | None:
        """The order, whoever's it is (an operator's view)."""
        ...

    async def customer(self, order_id: int) -> Recipient:
        """Who hears about the order: its retailer, and the provider it came through."""
        ...

    async def move(
        self, order_id: int, expected: Fulfilment, new: Fulfilment, now: datetime
    ) -> bool:
        """Move the order from ``expected`` to ``new``; False if it was no longer ``expected``."""
        ...

    async def add_transition(
        self, order_id: int, from_state: Fulfilment, to_state: Fulfilment, actor: str, now: datetime
    ) -> bool:
        """Note the transition unless the order reached ``to_state`` before; True if new."""
        ...


class OutboxRepository(Protocol):
    """Replies and notifications to send once the unit of work commits (whatsorder.outbox
    sends them)."""

    async def enqueue(
        self, provider: str, recipient: str, body: str, idempotency_key: str, now: datetime
    ) -> bool:
        """Add a reply unless one with this key exists; True if it was added."""
        ...

    async def enqueue_notification(self, notification: Notification, now: datetime) -> bool:
        """Add a (proactive) notification unless its key exists; True if it was added."""
        ...


class DeadLetterRepository(Protocol):
    """Deliveries (or parts of them) that cannot be processed, kept to inspect."""

    async def add(
        self,
        provider: str,
        delivery_key: str,
        reason: str,
        body: str,
        now: datetime,
        payload: str | None = None,
    ) -> bool:
        """Keep ``body`` unless this provider's ``delivery_key`` was kept; True if added.
        ``payload``: what a re-drive would process again (never shown), if it can be kept."""
        ...


class CustomerRepository(Protocol):
    """What the customer's messages say about them: their last message and their language."""

    async def seen(self, retailer_id: int, message_at: datetime) -> Customer:
        """Note a message sent at ``message_at`` (the last message only ever moves forward:
        a late retry of an older one leaves it) and return the customer as stored."""
        ...

    async def choose_language(self, retailer_id: int, language: str) -> None: ...


class ConsentRepository(Protocol):
    """The consent ledger: STOP and START once per provider message, the newest winning."""

    async def record(
        self,
        retailer_id: int,
        change: ConsentChange,
        source: str,
        source_ref: str,
        occurred_at: datetime,
        now: datetime,
        detail: str | None = None,
    ) -> bool:
        """Note a change once per ``(source, source_ref)``; True if it was new. It moves the
        customer's consent unless a change that happened later is already recorded."""
        ...

    async def opted_out(self, retailer_id: int) -> bool:
        """Whether the customer has said STOP (and not START since)."""
        ...


class PaymentLinkRepository(Protocol):
    """Payment links as stored, one per ``(provider, reference)`` (issue #17)."""

    async def find(self, provider: str, reference: str) -> StoredLink | None: ...

    async def of_order(self, order_id: int) -> list[StoredLink]: ...

    async def store_live(
        self, link: StoredLink, provider_link_id: str, url: str, now: datetime
    ) -> StoredLink:
        """Keep the provider's link; a row already live keeps what it has."""
        ...

    async def store_failure(self, link: StoredLink, error: str, now: datetime) -> None:
        """Note the provider's refusal for the operator, unless a link for it is live."""
        ...


class UnitOfWork(Protocol):
    """``async with uow: …; await uow.commit()``: leaving the block without commit rolls back.

    The repositories exist inside the block only; what they wrote commits together or not at
    all.
    """

    # Read-only properties: an implementation may hold a narrower type (its own repository).
    @property
    def ordering(self) -> OrderingRepository: ...

    @property
    def payments(self) -> PaymentRepository: ...

    @property
    def outbox(self) -> OutboxRepository: ...

    @property
    def fulfilment(self) -> FulfilmentRepository: ...

    @property
    def dead_letters(self) -> DeadLetterRepository: ...

    @property
    def customers(self) -> CustomerRepository: ...

    @property
    def consent(self) -> ConsentRepository: ...

    @property
    def payment_links(self) -> PaymentLinkRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...
