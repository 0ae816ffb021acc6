"""What the reconciliation sweeper needs of a payment provider (issue #17)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from whatsorder.ordering.payment_model import PaymentEvent


class SweepFailed(Exception):
    """The provider could not say. ``permanent``: asking again the same way cannot help (a
    4xx, e.g. a wrong key); the message is the provider's own, for the operator."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


class PaymentSource(Protocol):
    """One provider's account, read."""

    provider: str

    async def events_between(self, since: datetime, until: datetime) -> list[PaymentEvent]:
        """Payments that succeeded and refunds made from ``since`` to ``until``, told as the
        provider's webhooks tell them (the same business keys), event ids ``sweep:…``."""
        ...
