"""What a payment link needs of the providers and of storage (issue #17).

Creating a link is an outbound call that a retry, a duplicate ``PAY`` or a crash can repeat.
Each provider's own guarantee makes a repeat harmless (Stripe's ``Idempotency-Key``,
Razorpay's unique ``reference_id``), and both are keyed by ``LinkRequest.reference``, which
names the order, the amount and the currency: every repeat of one request names the same link
at the provider, and the same row here (docs/architecture.md, "Payment links").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from whatsorder.ordering.payment_model import StoredLink
from whatsorder.ordering.ports import UnitOfWork

# Razorpay's reference_id is at most 40 characters; Stripe's keys may be longer. One shape for
# both: "ORD-000123-49900-INR" fits, and is readable in either dashboard.
_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,40}")


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A link for ``amount`` (minor units) of ``currency`` towards one order, made and found at
    the provider by ``reference`` (``whatsorder.ordering.payment_model.link_reference``: the
    order, the amount, the currency)."""

    order_number: str
    amount: int
    currency: str
    description: str
    reference: str

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError(f"a payment link needs a positive amount, not {self.amount}")
        if not _REFERENCE.fullmatch(self.reference):
            raise ValueError(f"reference {self.reference!r} is not 1-40 letters, digits, - or _")


@dataclass(frozen=True, slots=True)
class CreatedLink:
    """A link as the provider holds it."""

    provider: str
    link_id: str  # cs_… (Stripe) or plink_… (Razorpay)
    url: str


class LinkFailed(Exception):
    """The provider did not give a link. ``permanent``: asking again the same way cannot help
    (a 4xx); the message is the provider's own, for the operator."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


class PaymentLinks(Protocol):
    """One provider's payment links."""

    provider: str

    async def create(self, request: LinkRequest) -> CreatedLink:
        """The link for ``request``: created now, or the one an earlier repeat created."""
        ...


class PaymentLinkRepository(Protocol):
    """Payment links as stored, one per ``(provider, reference)``."""

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


class LinkUnitOfWork(UnitOfWork, Protocol):
    """A unit of work that also holds payment links."""

    @property
    def payment_links(self) -> PaymentLinkRepository: ...
