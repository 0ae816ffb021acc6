"""What every payment-link provider is asked, answers and fails with.

Creating a link is an outbound call that a retry, a duplicate ``PAY`` or a crash can repeat.
Each provider's own guarantee makes a repeat harmless, and both are keyed by
``LinkRequest.reference``, which names the order and the amount: every repeat of one request
names the same link at the provider (docs/architecture.md, "Payment links").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# Razorpay's reference_id is at most 40 characters; Stripe's keys may be longer. One shape for
# both: "ORD-000123-49900-INR" fits, and is readable in either dashboard.
MAX_REFERENCE_CHARS = 40
_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,40}")


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A link for ``amount`` (minor units) of ``currency`` towards one order."""

    order_number: str
    amount: int
    currency: str
    description: str

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError(f"a payment link needs a positive amount, not {self.amount}")
        if not _REFERENCE.fullmatch(self.reference):
            raise ValueError(f"reference {self.reference!r} is not 1-40 letters, digits, - or _")

    @property
    def reference(self) -> str:
        """The provider-side key of this link: the order, the amount and its currency."""
        return f"{self.order_number}-{self.amount}-{self.currency.upper()}"


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
