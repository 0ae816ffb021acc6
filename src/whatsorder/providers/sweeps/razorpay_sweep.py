"""Razorpay's captured payments and processed refunds in a window of time, as payment events.

Told the way Razorpay's own webhooks tell them (``payment.captured``, ``refund.processed``), so
the sweeper and a webhook about the same money meet on the same business keys: a payment's
credit by its payment id, each refund's reversal by its refund id. Event ids are
``sweep:<id>``. The SDK is synchronous: each call runs in a worker thread, with a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import razorpay
import requests
from razorpay.errors import BadRequestError, GatewayError, ServerError

from whatsorder.ordering.payment_model import PaymentEvent, PaymentKind
from whatsorder.ordering.reconcile_ports import SweepFailed

PROVIDER = "razorpay"
PAGE = 100
MAX_PAGES = 100  # 10,000 payments a sweep: more is a sweep window set far too wide


class RazorpaySweep:
    """Reads one Razorpay account's payments and refunds (``api_base`` points tests at a fake)."""

    provider = PROVIDER

    def __init__(
        self, key_id: str, key_secret: str, *, api_base: str | None = None, timeout: float = 10.0
    ) -> None:
        options = {"base_url": api_base} if api_base else {}
        self._client = razorpay.Client(auth=(key_id, key_secret), **options)
        self._timeout = timeout

    async def events_between(self, since: datetime, until: datetime) -> list[PaymentEvent]:
        window = {"from": int(since.timestamp()), "to": int(until.timestamp())}
        found: list[PaymentEvent] = []
        for payment in await self._all(self._client.payment.all, window):
            if payment.get("status") == "captured":
                found.append(_captured(payment))
        for refund in await self._all(self._client.refund.all, window):
            if refund.get("status") == "processed":
                payment = await self._call(self._client.payment.fetch, refund["payment_id"])
                found.append(_refunded(refund, payment))
        return found

    async def _all(
        self, method: Callable[..., Any], window: dict[str, int]
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            answer = await self._call(method, {**window, "count": PAGE, "skip": page * PAGE})
            batch = answer.get("items", [])
            items.extend(item for item in batch if isinstance(item, dict))
            if len(batch) < PAGE:
                break
        return items

    async def _call(self, method: Callable[..., Any], argument: Any) -> dict[str, Any]:
        try:
            answer = await asyncio.to_thread(method, argument, timeout=self._timeout)
        except (requests.Timeout, requests.ConnectionError) as error:
            raise SweepFailed(
                f"Razorpay could not be reached: {type(error).__name__}", permanent=False
            ) from error
        except BadRequestError as error:
            raise SweepFailed(f"Razorpay refused: {error}", permanent=True) from error
        except (GatewayError, ServerError, ValueError) as error:
            raise SweepFailed(f"Razorpay failed: {error}", permanent=False) from error
        if not isinstance(answer, dict):
            raise SweepFailed("Razorpay answered something unreadable", permanent=False)
        return answer


def _order_number(entity: dict[str, Any]) -> str | None:
    notes = entity.get("notes")
    value = notes.get("order_id") if isinstance(notes, dict) else None
    return str(value).strip() or None if value is not None else None


def _captured(payment: dict[str, Any]) -> PaymentEvent:
    return PaymentEvent(
        provider=PROVIDER,
        event_id=f"sweep:{payment['id']}",
        kind=PaymentKind.SUCCEEDED,
        payment_id=payment["id"],
        order_number=_order_number(payment),
        amount=int(payment["amount"]),
        currency=str(payment["currency"]).upper(),
    )


def _refunded(refund: dict[str, Any], payment: dict[str, Any]) -> PaymentEvent:
    return PaymentEvent(
        provider=PROVIDER,
        event_id=f"sweep:{refund['id']}",
        kind=PaymentKind.REFUNDED,
        payment_id=refund["payment_id"],
        order_number=_order_number(payment),
        amount=int(refund["amount"]),
        currency=str(refund.get("currency") or payment["currency"]).upper(),
        refund_id=refund["id"],
    )
