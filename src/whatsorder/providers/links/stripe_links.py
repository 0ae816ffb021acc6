"""Stripe Checkout Sessions as payment links, created once by ``Idempotency-Key``.

Stripe keeps the first answer to a request for 24 hours and gives it back to any request with
the same key and the same parameters, without creating anything. The key is the request's
reference (the order, the amount, the currency), so a retried ``PAY``, a second one sent at
the same moment or a retry after a crash between Stripe's answer and our commit all get the
one session. A key reused with other parameters is Stripe's ``IdempotencyError``: never the
case here, since the parameters follow from the key.

The SDK retries connection errors, 409s and 5xx itself, with backoff and the same key
(``max_network_retries``); what is left after that is told as `LinkFailed`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import stripe
from stripe import APIConnectionError, RateLimitError, StripeError

from whatsorder.providers.links.base import CreatedLink, LinkFailed, LinkRequest

PROVIDER = "stripe"


class StripeLinks:
    """Checkout Sessions for one Stripe account (``api_base`` points tests at a fake)."""

    provider = PROVIDER

    def __init__(
        self,
        api_key: str,
        *,
        success_url: str,
        api_base: str | None = None,
        timeout: float = 10.0,
        max_network_retries: int = 2,
        budget: float | None = None,
    ) -> None:
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=stripe.HTTPXClient(timeout=timeout),
            max_network_retries=max_network_retries,
        )
        self._success_url = success_url
        # The whole call: by default every try, and the SDK's backoff between them (at most 2 s).
        self._budget = budget or timeout * (max_network_retries + 1) + 2.0 * max_network_retries

    async def create(self, request: LinkRequest) -> CreatedLink:
        try:
            # httpx bounds each read, not the request: a slow drip would outlive the budget.
            async with asyncio.timeout(self._budget):
                session = await self._client.v1.checkout.sessions.create_async(
                    params=self._params(request),  # type: ignore[arg-type]  # the SDK's TypedDict
                    options={"idempotency_key": request.reference},
                )
        except TimeoutError as error:
            raise LinkFailed(
                f"Stripe did not answer within {self._budget:.0f} s", permanent=False
            ) from error
        except (APIConnectionError, RateLimitError) as error:
            raise LinkFailed(
                f"Stripe could not be reached: {error.user_message or error}", permanent=False
            ) from error
        except StripeError as error:
            status = error.http_status or 0
            message = error.user_message or str(error) or type(error).__name__
            raise LinkFailed(
                f"Stripe refused the link (HTTP {status}): {message}",
                permanent=400 <= status < 500 and status not in (409, 429),
            ) from error
        if not session.url:
            raise LinkFailed("Stripe answered without the session's url", permanent=False)
        return CreatedLink(PROVIDER, session.id, session.url)

    def _params(self, request: LinkRequest) -> dict[str, Any]:
        # Our webhooks find the order by the payment's metadata (providers/payment_payload.py).
        metadata = {"order_id": request.order_number, "link_reference": request.reference}
        return {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": request.amount,
                        "product_data": {"name": request.description},
                    },
                }
            ],
            "client_reference_id": request.reference,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": self._success_url,
        }
