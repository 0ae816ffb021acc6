"""Stripe's succeeded payments and refunds in a window of time, as payment events.

Each event is told the way Stripe's own webhooks tell it, so the sweeper and a webhook about
the same money meet on the same business keys (services/payments.py, refunds.py): a payment's
credit by its PaymentIntent id, and refunds by the payment's refunded total with the refunds
listed (as ``charge.refunded`` does), so what the ledger already holds of that total is never
posted again, whichever of the two came first. Event ids are ``sweep:<id>``: the event log says
the sweeper found it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import stripe
from stripe import APIConnectionError, RateLimitError, StripeError

from whatsorder.ordering.payment_model import PaymentEvent, PaymentKind, Refund
from whatsorder.ordering.reconcile_ports import SweepFailed

PROVIDER = "stripe"
PAGE = 100


class StripeSweep:
    """Reads one Stripe account's payments and refunds (``api_base`` points tests at a fake)."""

    provider = PROVIDER

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 10.0,
        max_network_retries: int = 2,
    ) -> None:
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=stripe.HTTPXClient(timeout=timeout),
            max_network_retries=max_network_retries,
        )

    async def events_between(self, since: datetime, until: datetime) -> list[PaymentEvent]:
        """Payments that succeeded and refunds made in the window (Stripe's ``created``)."""
        try:
            return await self._events_between(int(since.timestamp()), int(until.timestamp()))
        except (APIConnectionError, RateLimitError) as error:
            raise SweepFailed(f"Stripe could not be reached: {error}", permanent=False) from error
        except StripeError as error:
            status = error.http_status or 0
            raise SweepFailed(
                f"Stripe refused (HTTP {status}): {error.user_message or error}",
                permanent=400 <= status < 500 and status not in (409, 429),
            ) from error

    async def _events_between(self, since: int, until: int) -> list[PaymentEvent]:
        found: list[PaymentEvent] = []
        window = {"created": {"gte": since, "lte": until}, "limit": PAGE}
        intents = await self._client.v1.payment_intents.list_async(params=window)  # type: ignore[arg-type]
        async for intent in intents.auto_paging_iter():
            if intent.status == "succeeded":
                found.append(_succeeded(intent))
        refunds = await self._client.v1.refunds.list_async(params=window)  # type: ignore[arg-type]
        refunded_intents: set[str] = set()
        async for refund in refunds.auto_paging_iter():
            if refund.status == "succeeded" and isinstance(refund.payment_intent, str):
                refunded_intents.add(refund.payment_intent)
        for intent_id in sorted(refunded_intents):
            found.append(await self._refunded(intent_id))
        return found

    async def _refunded(self, intent_id: str) -> PaymentEvent:
        """The intent's refunds so far, all of them: the total form Stripe's webhooks use."""
        intent = await self._client.v1.payment_intents.retrieve_async(intent_id)
        listed = await self._client.v1.refunds.list_async(
            params={"payment_intent": intent_id, "limit": PAGE}
        )
        by_id: dict[str, int] = defaultdict(int)
        async for refund in listed.auto_paging_iter():
            if refund.status == "succeeded":
                by_id[refund.id] = refund.amount
        refunds = tuple(Refund(refund_id, amount) for refund_id, amount in sorted(by_id.items()))
        return PaymentEvent(
            provider=PROVIDER,
            event_id=f"sweep:{intent_id}:refunded-to:{sum(by_id.values())}",
            kind=PaymentKind.REFUNDED,
            payment_id=intent_id,
            order_number=_order_number(intent.metadata),
            amount=sum(by_id.values()),
            currency=intent.currency.upper(),
            refunds=refunds,
        )


def _succeeded(intent: Any) -> PaymentEvent:
    return PaymentEvent(
        provider=PROVIDER,
        event_id=f"sweep:{intent.id}",
        kind=PaymentKind.SUCCEEDED,
        payment_id=intent.id,
        order_number=_order_number(intent.metadata),
        amount=int(intent.amount_received or intent.amount),
        currency=intent.currency.upper(),
    )


def _order_number(metadata: Any) -> str | None:
    value = (metadata.to_dict() if metadata is not None else {}).get("order_id")
    return str(value).strip() or None if value is not None else None
