"""One Meta delivery's items, each processed once under its own key, and how that went.

A message is keyed by its ``wamid`` and commits its claim, its order and its reply (to the
outbox) in one transaction; statuses go a chunk per transaction (`whatsorder.web.meta_statuses`);
what cannot be processed is kept as a dead letter, keyed by the hash of its content. An item
that failed for now is counted, so the delivery answers 503 (500 for an unexpected error) and
Meta retries it, while its siblings still run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.clock import utcnow
from whatsorder.ordering import services
from whatsorder.ordering.customer import ConsentChange
from whatsorder.ordering.model import OrderRejected, order_number
from whatsorder.providers import meta
from whatsorder.web import meta_statuses, webhooks
from whatsorder.web.answers import JSON_CONTENT_TYPE, Processed, json_stored
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime
from whatsorder_idempotency import (
    FingerprintMismatch,
    HandlerResult,
    IdempotentRequest,
    RequestInFlight,
    StoreBusy,
    StoreUnavailable,
    fingerprint,
)

log = logging.getLogger("whatsorder.web.meta")

_TRANSIENT = (StoreBusy, StoreUnavailable, RequestInFlight)


class DeliveryItems:
    """One delivery's items, each processed once under its own key, and how that went.

    ``path`` is the route's: each item's fingerprint covers it, as a request's would.
    ``delivery`` is the signed body as received: kept with each dead letter it leaves, so an
    operator can re-drive it (`whatsorder.web.redrive`) once what stopped it is fixed.
    """

    def __init__(
        self, runtime: Runtime, source_ip: str, path: str, delivery: bytes | None = None
    ) -> None:
        self.runtime = runtime
        self.source_ip = source_ip
        self.path = path
        self.delivery = delivery
        self.dead_lettered = 0
        self.unfinished = 0
        self.broken = False  # an unexpected error, not just a busy or unreachable store
        self.retry_after = 1

    async def settle(
        self, step: Callable[[], Awaitable[object]], fragment: bytes, items: int = 1
    ) -> None:
        """Run one step (of ``items`` items); one that cannot be processed becomes a dead
        letter, one that failed for now is counted so the delivery answers 503 (and its
        siblings still run)."""
        reason = await self.attempt(step, items)
        if reason is not None:
            await self.keep(reason, fragment)

    async def keep(self, reason: str, fragment: bytes) -> None:
        """A part that cannot be processed: kept as a dead letter, answered 200."""
        self.dead_lettered += 1
        await self.attempt(partial(self.dead_letter, reason, fragment))

    async def attempt(self, step: Callable[[], Awaitable[object]], items: int = 1) -> str | None:
        """Run ``step``; why it cannot ever be processed, or None (done, or retry later)."""
        try:
            await step()
        except FingerprintMismatch:
            return "This wamid was processed before with other content; this copy was not."
        except (meta.MalformedWebhook, OrderRejected) as error:
            return str(error)
        except _TRANSIENT as error:
            self.unfinished += items
            self.retry_after = max(self.retry_after, getattr(error, "retry_after", 5))
        except Exception:  # kept from the siblings; the delivery answers 500 and Meta retries
            log.exception("A Meta webhook item failed")
            self.unfinished += items
            self.broken = True
        return None

    def incomplete(self, items: int) -> Problem:
        """The answer that makes Meta retry: 503, or 500 after an unexpected error."""
        detail = (
            f"{self.unfinished} of {items} messages and statuses could not be processed now. "
            "Retry the delivery: those already processed are replayed, not repeated."
        )
        if self.broken:
            return Problem(500, "delivery-incomplete", "Delivery incomplete", detail)
        return Problem(
            503,
            "delivery-incomplete",
            "Delivery incomplete",
            detail,
            {"retry-after": str(self.retry_after)},
        )

    def _request(self, scope: str, key: str, canonical: bytes) -> IdempotentRequest:
        # A message has no raw body of its own (it is a part of the delivery's JSON), so its
        # fingerprint covers its own JSON canonicalised (sorted keys, no spaces): the same
        # message batched into another delivery is the same request. An Idempotency-Key
        # header is not used: it would name the delivery, not the message.
        return webhooks.idempotent_request(
            self.runtime,
            scope,
            key,
            fingerprint("POST", self.path, canonical, JSON_CONTENT_TYPE),
            self.source_ip,
            lambda: meta.redacted(canonical),
        )

    async def process_message(self, message: meta.MetaMessage) -> Processed | None:
        """The message's effects — retailer, order, reply in the outbox — once per wamid;
        None for a message that asks nothing (a reaction)."""
        if message.silent:
            return None
        runtime = self.runtime
        created: int | None = None
        inbound = message.inbound()
        sender_limit = webhooks.SenderLimit(inbound.sender)

        async def handle(connection: AsyncConnection) -> HandlerResult:
            nonlocal created
            now = utcnow()
            notes: dict[str, object] = {}
            uow = runtime.unit_of_work(connection)
            if not await sender_limit.allows(runtime):
                outcome = await services.answer_over_limit(uow, inbound, now)
            elif message.cart is not None:
                outcome = await services.place_catalogue_order(
                    uow, inbound, message.requested_lines(), now
                )
            else:
                outcome = await services.receive_message(uow, inbound, now, runtime.payment_links)
            if outcome.refused:
                # Not kept, and nothing sent: the wamid's key stays free for its own sender's
                # redeliveries.
                return HandlerResult(json_stored({"order": None}), notes, keep=False)
            created = outcome.order_id if outcome.created else None
            reply, order_id = outcome.reply, outcome.order_id
            notes.update(retailer_id=outcome.retailer_id, order_id=order_id)
            # The reply goes out through the outbox, in this transaction: it exists iff the
            # order does; the sender sends each part with its key as its Idempotency-Key.
            await services.queue_reply(
                runtime.unit_of_work(connection),
                meta.SOURCE,
                message.address,
                meta.text_parts(reply),
                services.reply_prefix(message.wamid),
                now,
            )
            number = None if order_id is None else order_number(order_id)
            return HandlerResult(json_stored({"order": number}), notes)

        request = self._request(meta.WEBHOOK_TYPE_MESSAGE, message.key, message.canonical)
        result = await runtime.idempotency.execute(request, handle)
        webhooks.count_created_order(meta.SOURCE, created, result)
        return Processed(result, created)

    async def process_preference(self, preference: meta.PreferenceChange) -> None:
        """A customer's marketing preference into the consent ledger, once: its idempotency
        record here, and the ledger's business key (``meta_preferences``, its reference)
        when a redelivery comes after the record expired."""

        async def handle(connection: AsyncConnection) -> HandlerResult:
            added = await services.record_preference(
                self.runtime.unit_of_work(connection),
                preference.sender,
                preference.profile_name,
                ConsentChange.STOP if preference.stops else ConsentChange.START,
                preference.reference,
                preference.occurred_at,
                preference.detail,
                utcnow(),
            )
            change = "stop" if preference.stops else "start"
            return HandlerResult(json_stored({"consent": change, "new": added}))

        request = self._request(meta.WEBHOOK_TYPE_PREFERENCE, preference.key, preference.canonical)
        await self.runtime.idempotency.execute(request, handle)

    async def process_statuses(self, chunk: meta_statuses.Chunk, content: bytes) -> None:
        """Record the sent messages' states of ``chunk`` in one transaction; none moves back."""

        async def handle(connection: AsyncConnection) -> HandlerResult:
            uow = self.runtime.unit_of_work(connection)
            moved = await meta_statuses.record(uow, chunk, utcnow())
            return HandlerResult(json_stored({"statuses": len(chunk), "moved": moved}))

        request = self._request(meta.WEBHOOK_TYPE_STATUS, meta_statuses.key(content), content)
        await self.runtime.idempotency.execute(request, handle)

    async def dead_letter(self, reason: str, content: bytes) -> None:
        """Keep ``content`` (redacted) once, keyed by its hash: a redelivery adds no copy,
        even after its idempotency record expired (the hash is the row's business key too).
        The delivery it came in is kept beside it, unredacted and never shown, to re-drive."""
        key = hashlib.sha256(content).hexdigest()

        async def handle(connection: AsyncConnection) -> HandlerResult:
            body = meta.redacted(content)
            await services.keep_dead_letter(
                self.runtime.unit_of_work(connection),
                meta.SOURCE,
                key,
                reason,
                body,
                utcnow(),
                _text(self.delivery),
            )
            return HandlerResult(json_stored({"dead_letter": True}))

        request = self._request(meta.WEBHOOK_TYPE_DEAD_LETTER, key, content)
        await self.runtime.idempotency.execute(request, handle)


def _text(delivery: bytes | None) -> str | None:
    """The delivery as text to keep; None when it is not UTF-8, as text it could not be given
    back byte for byte (such a dead letter says it cannot be re-driven)."""
    if delivery is None:
        return None
    try:
        return delivery.decode("utf-8")
    except UnicodeDecodeError:
        return None
