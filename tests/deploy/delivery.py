"""The provider's side: Twilio deliveries signed for the public https URL, retried as providers do.

An attempt answered 502, 503 or 504 (or 409 while a first copy is in flight), or that could not
connect, is retried after an exponential backoff, at most ``MAX_ATTEMPTS`` times. Every attempt
is recorded with its status and latency, so a test can say what a deployment cost.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy.cluster import trusting
from support import INBOUND_PATH, encode, inbound_form, new_sid, signed_headers

RETRIED_STATUSES = frozenset({409, 502, 503, 504})
MAX_ATTEMPTS = 6
FIRST_BACKOFF_SECONDS = 0.2


@dataclass(frozen=True)
class Attempt:
    status: int | None  # None: no answer (refused, reset, timed out)
    seconds: float
    error: str | None = None


@dataclass
class Delivery:
    """One message as the provider saw it: every attempt, and the answer it settled on."""

    sid: str
    pairs: list[tuple[str, str]]
    attempts: list[Attempt] = field(default_factory=list)
    body: bytes | None = None
    replayed: bool = False
    seconds: float = 0.0  # from the first attempt to the last answer, backoff included

    @property
    def delivered(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].status == 200


class Provider:
    """Sends signed inbound messages to ``public_url`` (the proxy), trusting ``certificate``."""

    def __init__(self, public_url: str, certificate: Path) -> None:
        self.public_url = public_url
        self._client = httpx.AsyncClient(
            base_url=public_url,
            verify=trusting(certificate),
            timeout=httpx.Timeout(30, connect=5),
            limits=httpx.Limits(max_connections=16),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def message(self, text: str, *, sender: str) -> Delivery:
        sid = new_sid()
        return Delivery(sid, inbound_form(text, sid=sid, sender=sender))

    async def deliver(self, delivery: Delivery) -> Delivery:
        """Post until answered 200, a status not worth retrying, or ``MAX_ATTEMPTS``."""
        body = encode(delivery.pairs)
        headers = signed_headers(INBOUND_PATH, delivery.pairs, public_url=self.public_url)
        began = time.monotonic()
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                await asyncio.sleep(FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1))
            started = time.monotonic()
            try:
                response = await self._client.post(INBOUND_PATH, content=body, headers=headers)
            except httpx.HTTPError as error:
                delivery.attempts.append(
                    Attempt(None, time.monotonic() - started, type(error).__name__)
                )
                continue
            delivery.attempts.append(Attempt(response.status_code, time.monotonic() - started))
            if response.status_code not in RETRIED_STATUSES:
                delivery.body = response.content
                delivery.replayed = response.headers.get("idempotent-replayed") == "true"
                break
        delivery.seconds = time.monotonic() - began
        return delivery

    async def redeliver(self, original: Delivery) -> Delivery:
        """The same message again, as a provider resends it: same MessageSid, same fields."""
        return await self.deliver(Delivery(original.sid, original.pairs))


async def keep_delivering(
    provider: Provider,
    stop: asyncio.Event,
    *,
    skus: list[str],
    senders: int = 4,
    redeliver_every: int = 3,
    pause: float = 0.2,
) -> list[Delivery]:
    """``senders`` customers each ordering every ``pause`` seconds or so until ``stop``; every
    ``redeliver_every``-th message is delivered twice (the provider's retry)."""
    numbers = itertools.count()
    deliveries: list[Delivery] = []

    async def customer(index: int) -> None:
        while not stop.is_set():
            number = next(numbers)
            text = f"ORDER 1 x {skus[number % len(skus)]}"
            first = await provider.deliver(
                provider.message(text, sender=f"whatsapp:+9190000{index:05d}")
            )
            deliveries.append(first)
            if number % redeliver_every == 0:
                deliveries.append(await provider.redeliver(first))
            # Paced, so the replicas restarting have a share of this small machine's two cores.
            await asyncio.sleep(pause)

    await asyncio.gather(*(customer(index) for index in range(senders)))
    return deliveries


@dataclass(frozen=True)
class Cost:
    """What a stretch of deliveries cost: the figures the issue asks an upgrade to report."""

    messages: int
    deliveries: int
    requests: int
    retried: int  # attempts after the first
    failed_attempts: Counter[str]  # by status ("connection error" when none came back)
    undelivered: int  # deliveries that never got their 200
    max_attempt_seconds: float
    max_delivery_seconds: float

    @classmethod
    def of(cls, deliveries: list[Delivery]) -> Cost:
        attempts = [attempt for delivery in deliveries for attempt in delivery.attempts]
        return cls(
            messages=len({delivery.sid for delivery in deliveries}),
            deliveries=len(deliveries),
            requests=len(attempts),
            retried=len(attempts) - len(deliveries),
            failed_attempts=Counter(
                "connection error" if attempt.status is None else str(attempt.status)
                for attempt in attempts
                if attempt.status != 200
            ),
            undelivered=sum(not delivery.delivered for delivery in deliveries),
            max_attempt_seconds=max((attempt.seconds for attempt in attempts), default=0.0),
            max_delivery_seconds=max((delivery.seconds for delivery in deliveries), default=0.0),
        )

    def summary(self) -> str:
        failed = ", ".join(f"{count} × {kind}" for kind, count in self.failed_attempts.items())
        return (
            f"{self.messages} messages, {self.deliveries} deliveries, {self.requests} requests; "
            f"failed attempts: {failed or 'none'}; retried {self.retried}; undelivered "
            f"{self.undelivered}; slowest attempt {self.max_attempt_seconds:.2f} s, slowest "
            f"delivery with retries {self.max_delivery_seconds:.2f} s"
        )
