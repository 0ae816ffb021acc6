"""Razorpay Payment Links, created once by ``reference_id``.

Razorpay refuses a second payment link with a ``reference_id`` it already holds. The
reference is the request's (the order, the amount, the currency), so a repeat of one request
(a retried ``PAY``, a second at the same moment, a retry after a crash between Razorpay's
answer and our commit) is refused, and the link that holds the reference is fetched instead:
one link, whoever asked first.

Razorpay's SDK is synchronous (``requests``), with no timeout unless given one and no retry of
5xx: each call runs in a worker thread with a timeout, and timeouts, connection errors and 5xx
are retried here with backoff, bounded in attempts. A retry after an ambiguous failure (the
request may have reached Razorpay) meets the reference it left and fetches that link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import razorpay
import requests
from razorpay.errors import BadRequestError, GatewayError, ServerError

from whatsorder.providers.links.base import CreatedLink, LinkFailed, LinkRequest

PROVIDER = "razorpay"
LIVE_STATES = ("created", "partially_paid")  # a link that can still be paid


class RazorpayLinks:
    """Payment Links for one Razorpay account (``api_base`` points tests at a fake)."""

    provider = PROVIDER

    def __init__(
        self,
        key_id: str,
        key_secret: str,
        *,
        api_base: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        first_delay: float = 0.5,
        budget: float | None = None,
    ) -> None:
        options = {"base_url": api_base} if api_base else {}
        self._client = razorpay.Client(auth=(key_id, key_secret), **options)
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._first_delay = first_delay
        self._budget = budget  # the whole of create(), tries and waits; None: not bounded apart

    async def create(self, request: LinkRequest) -> CreatedLink:
        if self._budget is None:
            return await self._create(request)
        try:
            async with asyncio.timeout(self._budget):
                return await self._create(request)
        except TimeoutError as error:
            raise LinkFailed(
                f"Razorpay did not answer within {self._budget:.0f} s", permanent=False
            ) from error

    async def _create(self, request: LinkRequest) -> CreatedLink:
        delay = self._first_delay
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._create_once(request)
            except LinkFailed as failure:
                if failure.permanent or attempt == self._attempts:
                    raise
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _create_once(self, request: LinkRequest) -> CreatedLink:
        body = {
            "amount": request.amount,
            "currency": request.currency.upper(),
            "accept_partial": False,
            "reference_id": request.reference,
            "description": request.description,
            # Our webhooks find the order by the payment's notes (providers/payment_payload.py).
            "notes": {"order_id": request.order_number},
            "reminder_enable": False,
        }
        try:
            link = await self._call(self._client.payment_link.create, body)
        except BadRequestError as error:
            if "reference" not in str(error).lower():
                raise LinkFailed(f"Razorpay refused the link: {error}", permanent=True) from error
            found = await self._by_reference(request)
            if found is None:
                # The reference is held, but by no live link of this amount that Razorpay
                # lists yet (or one paid or cancelled meanwhile): asking again settles it.
                raise LinkFailed(
                    f"Razorpay holds reference {request.reference} but lists no live link for "
                    f"it: {error}",
                    permanent=False,
                ) from error
            return found
        return _created(link)

    async def _by_reference(self, request: LinkRequest) -> CreatedLink | None:
        """The live link holding ``request``'s reference, if its amount is the one asked."""
        listed = await self._call(
            self._client.payment_link.all, {"reference_id": request.reference}
        )
        for link in listed.get("payment_links", []):
            if (
                link.get("reference_id") == request.reference
                and link.get("amount") == request.amount
                and link.get("status") in LIVE_STATES
            ):
                return _created(link)
        return None

    async def _call(self, method: Any, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            # requests' timeout bounds each read, not the call: the thread is not waited beyond
            # twice that (it ends on its own; a link it made is found by its reference).
            async with asyncio.timeout(2 * self._timeout):
                answer = await asyncio.to_thread(method, dict(body), timeout=self._timeout)
        except TimeoutError as error:
            raise LinkFailed(
                f"Razorpay did not answer within {2 * self._timeout:.0f} s", permanent=False
            ) from error
        except (requests.Timeout, requests.ConnectionError) as error:
            raise LinkFailed(
                f"Razorpay could not be reached: {type(error).__name__}", permanent=False
            ) from error
        except (GatewayError, ServerError) as error:
            raise LinkFailed(f"Razorpay failed: {error}", permanent=False) from error
        except ValueError as error:  # a body that is not JSON (a proxy's error page)
            raise LinkFailed(
                f"Razorpay answered something unreadable: {error}", permanent=False
            ) from error
        if not isinstance(answer, dict):
            raise LinkFailed("Razorpay answered something unreadable", permanent=False)
        return answer


def _created(link: Mapping[str, Any]) -> CreatedLink:
    link_id, url = link.get("id"), link.get("short_url")
    if not isinstance(link_id, str) or not isinstance(url, str) or not url:
        raise LinkFailed("Razorpay answered without the link's id or url", permanent=False)
    return CreatedLink(PROVIDER, link_id, url)
