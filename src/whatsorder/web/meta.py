"""Meta's WhatsApp Cloud API webhook: the verification handshake and deliveries.

A delivery may carry many messages and statuses, and Meta may redeliver them batched
differently: split over several requests, or merged with new ones. So the idempotency engine
runs once per message, keyed by its ``wamid``, and once per status, keyed by ``wamid:status`` —
never once per request, whose key (a body hash) would see "A+B+C" and "A+B+C+D" as different
requests and place A, B and C twice. Each message commits its claim, its order and its reply
(to the outbox) in one transaction, so a delivery cut short leaves whole messages behind, and
Meta's retry replays them and processes the rest.

Only signature problems are refused (4xx): Meta retries anything but 200 for seven days, so a
signed payload we cannot process is answered 200 and kept as a dead letter. A transient failure
answers 503 so that Meta does retry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder import observability
from whatsorder.db.dead_letters import add_dead_letter
from whatsorder.db.outbox import OutboxRepository
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.idempotency import (
    FingerprintMismatch,
    HandlerResult,
    IdempotentRequest,
    Outcome,
    RequestInFlight,
    StoreBusy,
    StoredResponse,
    StoreUnavailable,
    fingerprint,
)
from whatsorder.idempotency.record import utcnow
from whatsorder.ordering import replies, services
from whatsorder.ordering.grammar import PlaceOrder, parse_message
from whatsorder.ordering.model import OrderRejected, order_number
from whatsorder.providers import meta
from whatsorder.settings import secret
from whatsorder.web import webhooks
from whatsorder.web.guards import client_ip, require_https
from whatsorder.web.openapi import META_DELIVERY, META_HANDSHAKE, problems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime, runtime_of

PATH = "/api/v1/whatsapp/meta/webhook"
MAX_BODY_BYTES = 3 * 1024 * 1024  # Meta's payloads reach 3 MB
JSON_CONTENT_TYPE = "application/json"

router = APIRouter(tags=["meta"])
log = logging.getLogger("whatsorder.web.meta")

_TRANSIENT = (StoreBusy, StoreUnavailable, RequestInFlight)


@router.get(
    PATH,
    response_class=PlainTextResponse,
    summary="Meta webhook verification handshake",
    responses={
        200: {"content": {"text/plain": {}}, "description": "hub.challenge, echoed"},
        **problems(403, 429, 503),
    },
    openapi_extra=META_HANDSHAKE,
)
async def verify_subscription(request: Request) -> Response:
    """Answer Meta's subscription check: ``hub.challenge`` if mode and verify token match."""
    runtime = runtime_of(request)
    require_https(request, runtime.settings)
    await webhooks.check_ip(runtime, client_ip(request, runtime.settings))
    expected = secret(runtime.settings.meta_verify_token)
    if expected is None:
        raise webhooks.not_configured("Meta", "WHATSORDER_META_VERIFY_TOKEN")
    query = request.query_params
    token = query.get("hub.verify_token", "")
    challenge = query.get("hub.challenge", "")
    token_matches = hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))
    if query.get("hub.mode") != "subscribe" or not token_matches or not challenge:
        raise Problem(
            403,
            "verification-refused",
            "Verification refused",
            "hub.mode must be subscribe, hub.verify_token must match the configured verify "
            "token, and hub.challenge must be present.",
        )
    return PlainTextResponse(challenge)


@router.post(
    PATH,
    summary="Meta WhatsApp Cloud API webhook delivery",
    responses={
        200: {"content": {JSON_CONTENT_TYPE: {}}, "description": "Every item processed or kept"},
        **problems(401, 403, 408, 413, 429, 503),
    },
    openapi_extra=META_DELIVERY,
)
async def receive_delivery(request: Request) -> Response:
    """Process every message and status of a delivery once; 200 when all are done."""
    observability.bind(webhook_type=meta.SOURCE)
    runtime = runtime_of(request)
    body, source_ip = await _verify(request, runtime)
    batch = _Batch(runtime, source_ip)
    try:
        delivery = meta.parse_delivery(body)
    except meta.MalformedWebhook as error:
        await batch.dead_letter(str(error), body)
        return _received(0, 0, dead_lettered=1)
    for rejected in delivery.rejected:
        await batch.keep(rejected.reason, rejected.fragment)
    for message in delivery.messages:
        await batch.settle(partial(batch.process_message, message), message.canonical)
    for status in delivery.statuses:
        await batch.settle(partial(batch.process_status, status), status.canonical)
    if batch.unfinished:
        raise batch.incomplete(len(delivery.messages) + len(delivery.statuses))
    return _received(
        len(delivery.messages), len(delivery.statuses), dead_lettered=batch.dead_lettered
    )


async def _verify(request: Request, runtime: Runtime) -> tuple[bytes, str]:
    """The raw body and the caller's address, once every guard and the signature passed."""
    settings = runtime.settings
    admitted = await webhooks.admit(request, runtime, MAX_BODY_BYTES)
    body, address = admitted.body, admitted.source_ip
    app_secret = webhooks.required_secret(
        settings.meta_app_secret, "Meta", "WHATSORDER_META_APP_SECRET"
    )
    signature = webhooks.signature_of(request, meta.SOURCE, meta.SIGNATURE_HEADER)
    if not meta.signature_is_valid(app_secret, body, signature):
        raise webhooks.signature_invalid(
            meta.SOURCE,
            meta.SIGNATURE_HEADER,
            "X-Hub-Signature-256 does not match the body and the configured app secret.",
        )
    return body, address


def _received(messages: int, statuses: int, *, dead_lettered: int) -> Response:
    return JSONResponse(
        {"received": messages, "statuses": statuses, "dead_lettered": dead_lettered}
    )


def _stored_json(document: dict[str, object]) -> StoredResponse:
    return StoredResponse(
        200, json.dumps(document).encode(), (("content-type", JSON_CONTENT_TYPE),)
    )


class _Batch:
    """One delivery's items, each processed once under its own key, and how that went."""

    def __init__(self, runtime: Runtime, source_ip: str) -> None:
        self.runtime = runtime
        self.source_ip = source_ip
        self.dead_lettered = 0
        self.unfinished = 0
        self.broken = False  # an unexpected error, not just a busy or unreachable store
        self.retry_after = 1

    async def settle(self, step: Callable[[], Awaitable[None]], fragment: bytes) -> None:
        """Run one item; one that cannot be processed becomes a dead letter, one that failed
        for now is counted so the delivery answers 503 (and its siblings still run)."""
        reason = await self._attempt(step)
        if reason is not None:
            await self.keep(reason, fragment)

    async def keep(self, reason: str, fragment: bytes) -> None:
        """A part that cannot be processed: kept as a dead letter, answered 200."""
        self.dead_lettered += 1
        await self._attempt(partial(self.dead_letter, reason, fragment))

    async def _attempt(self, step: Callable[[], Awaitable[None]]) -> str | None:
        """Run ``step``; why it cannot ever be processed, or None (done, or retry later)."""
        try:
            await step()
        except FingerprintMismatch:
            return "This wamid was processed before with other content; this copy was not."
        except (meta.MalformedWebhook, OrderRejected) as error:
            return str(error)
        except _TRANSIENT as error:
            self.unfinished += 1
            self.retry_after = max(self.retry_after, getattr(error, "retry_after", 5))
        except Exception:  # kept from the siblings; the delivery answers 500 and Meta retries
            log.exception("A Meta webhook item failed")
            self.unfinished += 1
            self.broken = True
        return None

    def incomplete(self, items: int) -> Problem:
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
        settings = self.runtime.settings
        return IdempotentRequest(
            scope=scope,
            key=key,
            fingerprint=fingerprint("POST", PATH, canonical, JSON_CONTENT_TYPE),
            source_ip=self.source_ip,
            request_body=meta.redacted(canonical) if settings.store_request_bodies else None,
        )

    async def process_message(self, message: meta.MetaMessage) -> None:
        """The message's effects — retailer, order, reply in the outbox — once per wamid."""
        if message.silent:
            return
        runtime = self.runtime
        placed: int | None = None

        async def handle(connection: AsyncConnection) -> HandlerResult:
            nonlocal placed
            now = utcnow()
            inbound = message.inbound()
            notes: dict[str, object] = {}
            # Inside the idempotency scope: a redelivery never counts against the sender.
            if not await runtime.limits.allow_sender(inbound.sender):
                observability.record_rate_limited("sender", inbound.sender)
                reply, order_id = replies.RATE_LIMITED, None
            else:
                uow = SqlUnitOfWork(connection)
                if message.cart is not None:
                    outcome = await services.place_catalogue_order(
                        uow, inbound, message.requested_lines(), now
                    )
                    placed = outcome.order_id
                else:
                    outcome = await services.receive_message(uow, inbound, now)
                    if isinstance(parse_message(inbound.text), PlaceOrder):
                        placed = outcome.order_id
                reply, order_id = outcome.reply, outcome.order_id
                notes.update(retailer_id=outcome.retailer_id, order_id=order_id)
            await _enqueue_reply(connection, message, reply, now)
            number = None if order_id is None else order_number(order_id)
            return HandlerResult(_stored_json({"order": number}), notes)

        request = self._request(meta.WEBHOOK_TYPE_MESSAGE, message.key, message.canonical)
        result = await runtime.idempotency.execute(request, handle)
        # As on Twilio's route: new keys only; a take-over finds the order it placed before.
        if placed is not None and result.outcome is Outcome.NEW:
            observability.record_order_created(meta.SOURCE, placed)

    async def process_status(self, status: meta.StatusUpdate) -> None:
        """Record a sent message's state once per wamid:status; it never moves back."""

        async def handle(connection: AsyncConnection) -> HandlerResult:
            await services.record_message_status(
                SqlUnitOfWork(connection),
                meta.SOURCE,
                status.wamid,
                status.status,
                status.error_code,
                utcnow(),
            )
            return HandlerResult(_stored_json({"status": status.status}))

        request = self._request(meta.WEBHOOK_TYPE_STATUS, status.key, status.canonical)
        await self.runtime.idempotency.execute(request, handle)

    async def dead_letter(self, reason: str, content: bytes) -> None:
        """Keep ``content`` (redacted) once, keyed by its hash: a redelivery adds no copy,
        even after its idempotency record expired (the hash is the row's business key too)."""
        key = hashlib.sha256(content).hexdigest()

        async def handle(connection: AsyncConnection) -> HandlerResult:
            body = meta.redacted(content)
            await add_dead_letter(connection, meta.SOURCE, key, reason, body, utcnow())
            return HandlerResult(_stored_json({"dead_letter": True}))

        request = self._request(meta.WEBHOOK_TYPE_DEAD_LETTER, key, content)
        await self.runtime.idempotency.execute(request, handle)


async def _enqueue_reply(
    connection: AsyncConnection, message: meta.MetaMessage, reply: str, now: datetime
) -> None:
    """The reply goes out through the outbox, in this transaction: it exists iff the order does.

    Keys are ``reply:<wamid>`` (``reply:<wamid>:2``… for the parts of a long reply); the
    sender sends each with that key as its Idempotency-Key.
    """
    outbox = OutboxRepository(connection)
    for index, part in enumerate(meta.text_parts(reply), start=1):
        key = f"reply:{message.wamid}" + ("" if index == 1 else f":{index}")
        await outbox.enqueue(meta.SOURCE, message.address, part, key, now)
