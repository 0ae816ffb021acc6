"""The customer's side of the in-memory unit of work (tests/fake_uow.py): their language,
last message and consent, as `whatsorder.ordering.ports.CustomerRepository` and
`ConsentRepository` promise them: the last message only moves forward, and a consent change is
recorded once per provider message, the newest winning."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from whatsorder.ordering.customer import ConsentChange, Customer


@dataclass
class CustomerBooks:
    """What the customers' repositories write (a part of `fake_uow.Books`)."""

    languages: dict[int, str] = field(default_factory=dict)  # retailer id → chosen language
    last_inbound: dict[int, datetime] = field(default_factory=dict)
    # The consent ledger by (source, source_ref): (retailer id, change, occurred at).
    consent_events: dict[tuple[str, str], tuple[int, ConsentChange, datetime]] = field(
        default_factory=dict
    )
    opted_out: dict[int, datetime] = field(default_factory=dict)
    consent_changed: dict[int, datetime] = field(default_factory=dict)


class InMemoryCustomers:
    """`whatsorder.ordering.ports.CustomerRepository` over `CustomerBooks`."""

    def __init__(self, books: CustomerBooks) -> None:
        self._books = books

    async def seen(self, retailer_id: int, message_at: datetime) -> Customer:
        before = self._books.last_inbound.get(retailer_id)
        if before is None or before < message_at:
            self._books.last_inbound[retailer_id] = message_at
        return Customer(retailer_id, self._books.languages.get(retailer_id))

    async def choose_language(self, retailer_id: int, language: str) -> None:
        self._books.languages[retailer_id] = language


class InMemoryConsent:
    """`whatsorder.ordering.ports.ConsentRepository` over `CustomerBooks`: once per provider
    message, the newest change winning."""

    def __init__(self, books: CustomerBooks) -> None:
        self._books = books

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
        books = self._books
        if (source, source_ref) in books.consent_events:
            return False
        books.consent_events[(source, source_ref)] = (retailer_id, change, occurred_at)
        changed = books.consent_changed.get(retailer_id)
        if changed is None or changed <= occurred_at:
            books.consent_changed[retailer_id] = occurred_at
            if change is ConsentChange.STOP:
                books.opted_out[retailer_id] = occurred_at
            else:
                books.opted_out.pop(retailer_id, None)
        return True

    async def opted_out(self, retailer_id: int) -> bool:
        return retailer_id in self._books.opted_out
