"""The one pipeline every signed webhook runs through (docs/architecture.md §2, in order).

A provider is described once (`Provider`: its secret, its signature header and check) and each
of its webhooks once (`Webhook`: its type, how it parses, its key, fingerprint and record, its
handler). `run` does the rest: the cheap guards (`admit`: body limit, HTTPS, per-IP limit), the
secret (503), the signature (401, 403), parsing (400), the idempotency engine around the
handler on the claim's own transaction, and the answer. Meta's route, whose delivery holds many
items each with its own key, shares `receive` (the steps up to the signature) and the helpers
below, and runs the engine once per item itself (`whatsorder.web.meta_items`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import Request, Response
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.exceptions import HTTPException

from whatsorder import observability
from whatsorder.ordering.ports import UnitOfWork
from whatsorder.providers.malformed import MalformedWebhook
from whatsorder.settings import Settings
from whatsorder.web.answers import Processed, json_response, to_response
from whatsorder.web.failed_deliveries import Failed, kept_from
from whatsorder.web.guards import client_ip, read_body, require_https
from whatsorder.web.problems import Problem
from whatsorder.web.refusals import (
    malformed_body,
    malformed_webhook,
    required_secret,
    signature_invalid,
    signature_of,
)
from whatsorder.web.runtime import Runtime, runtime_of
from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyError,
    IdempotentRequest,
    InvalidKey,
    Outcome,
    Result,
    key_from_headers,
)

Event = TypeVar("Event")


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request past the cheap guards: its raw body, unparsed, and who sent it."""

    body: bytes
    source_ip: str


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request past the guards with the provider's secret and its signature header: what
    the provider's check and parser read."""

    request: Request
    path: str  # the route's, as the provider calls it and as fingerprints cover it
    settings: Settings
    body: bytes
    source_ip: str
    secret: str
    signature: str
    redrive: bool = False  # an operator's re-drive of a kept delivery, not the provider's

    def text(self) -> str:
        """The body as providers sign it: UTF-8 text, byte for byte; else 400."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise malformed_body() from error


class SignatureMismatch(Exception):
    """The signature does not match the request; a message, if any, is the 403's detail."""


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider, described once: how its webhooks are signed."""

    name: str  # as people write it, in the 503 "… not configured"
    source: str  # as metrics and logs name it
    secret: Callable[[Settings], SecretStr | None]
    variable: str  # the secret's environment variable, named by the 503
    signature_header: str
    # Raises SignatureMismatch (403), or a Problem for what comes first (415, 400).
    verify: Callable[[Incoming], None]
    max_body_bytes: int | None = None  # the settings' limit unless given


@dataclass(frozen=True, slots=True)
class Handled:
    """What a handler did: the answer to keep, the order it created and what a payment event
    did (both counted once the transaction committed)."""

    result: HandlerResult
    created_order: int | None = None
    payment_result: str | None = None


@dataclass(frozen=True, slots=True)
class Webhook(Generic[Event]):
    """One webhook of a provider, described once; `run` carries it through every step."""

    provider: Provider
    type: str  # the idempotency scope and the logs' webhook_type
    path: str
    parse: Callable[[Incoming], Event]  # raises MalformedWebhook (400) or NotOurConcern
    key: Callable[[Event], str]  # derived from the event
    fingerprint: Callable[[Event, Incoming], str]  # over what says which request this is
    record: Callable[[Event], str]  # the request as kept, personal data masked
    handle: Callable[[Runtime, Event, UnitOfWork], Awaitable[Handled]]
    client_keys: bool = False  # an Idempotency-Key header, if sent, takes the derived key's place


class NotOurConcern(Exception):
    """A verified event we do not act on: acknowledged with 200, stored nowhere, so the
    provider stops sending it."""

    def __init__(self, event_id: str, event_type: str) -> None:
        super().__init__(event_type)
        self.event_id = event_id
        self.event_type = event_type


async def run(request: Request, webhook: Webhook[Event]) -> Response:
    """Every step of docs/architecture.md §2 for one request of ``webhook``."""
    observability.bind(webhook_type=webhook.type)
    runtime = runtime_of(request)
    incoming = await receive(request, runtime, webhook.provider, webhook.path)
    try:
        processed = await process(runtime, webhook, incoming)
    except NotOurConcern as ignored:
        document = {"received": True, "event_id": ignored.event_id, "ignored": ignored.event_type}
        return json_response(document)
    except Failed as failed:  # kept for an operator's re-drive, then answered as it was (500)
        await failed.keep(runtime)
        raise failed.error from None
    return to_response(processed.result)


async def process(runtime: Runtime, webhook: Webhook[Event], incoming: Incoming) -> Processed:
    """The steps after the signature: parse (400), key, the engine around the handler.

    Raises `Failed` around an unexpected error of the handler's, for the caller to keep the
    delivery (failed_deliveries.py) or not (a re-drive of it); `NotOurConcern` as parsed.
    """
    try:
        event = webhook.parse(incoming)
    except MalformedWebhook as error:
        raise malformed_webhook(error) from error
    key = webhook.key(event)
    if webhook.client_keys:
        key = client_key(incoming.request, webhook.type) or key
    idempotent = idempotent_request(
        runtime,
        webhook.type,
        key,
        webhook.fingerprint(event, incoming),
        incoming.source_ip,
        lambda: webhook.record(event),
    )
    handled: Handled | None = None

    async def handle(connection: AsyncConnection) -> HandlerResult:
        nonlocal handled
        handled = await webhook.handle(runtime, event, runtime.unit_of_work(connection))
        return handled.result

    try:
        result = await runtime.idempotency.execute(idempotent, handle)
    except (IdempotencyError, Problem, HTTPException, InvalidKey):
        raise  # answered as what they are: busy, in flight, another body, a refusal
    except Exception as error:
        kept = kept_from(
            incoming.request, webhook.type, incoming.path, incoming.body, incoming.source_ip
        )
        raise Failed(
            error,
            provider=webhook.provider.source,
            webhook_type=webhook.type,
            key=key,
            record=webhook.record(event),
            kept=kept,
        ) from error
    if handled is None:
        return Processed(result, None)
    count_created_order(webhook.provider.source, handled.created_order, result)
    count_payment_event(webhook.provider.source, handled.payment_result, result)
    created = handled.created_order if result.outcome in (Outcome.NEW, Outcome.TAKEOVER) else None
    return Processed(result, created)


async def receive(request: Request, runtime: Runtime, provider: Provider, path: str) -> Incoming:
    """Steps 1–5: the guards, the provider's secret (503) and its signature (401, 403)."""
    admitted = await admit(request, runtime, provider.max_body_bytes)
    plain = required_secret(provider.secret(runtime.settings), provider.name, provider.variable)
    signature = signature_of(request, provider.source, provider.signature_header)
    incoming = Incoming(
        request, path, runtime.settings, admitted.body, admitted.source_ip, plain, signature
    )
    try:
        provider.verify(incoming)
    except SignatureMismatch as error:
        detail = str(error) or None
        raise signature_invalid(provider.source, provider.signature_header, detail) from error
    return incoming


async def admit(request: Request, runtime: Runtime, max_body_bytes: int | None = None) -> Admitted:
    """Steps 1–3: 413 (or 408, too slow), 403 (not HTTPS), 429 — before any crypto."""
    settings = runtime.settings
    body = await read_body(
        request, max_body_bytes or settings.max_body_bytes, settings.body_read_timeout_seconds
    )
    require_https(request, settings)
    address = client_ip(request, settings)
    await check_ip(runtime, address)
    return Admitted(body, address)


async def check_ip(runtime: Runtime, address: str) -> None:
    """The per-IP limit (429), counted in the rate-limit metric."""
    try:
        await runtime.limits.check_ip(address)
    except Problem as refused:
        if refused.status == 429:  # not the 503 of unreachable counters
            observability.record_rate_limited("ip")
        raise


def client_key(request: Request, scope: str) -> str | None:
    """The client's ``Idempotency-Key`` (or ``X-Idempotency-Key``); a broken one is counted
    and refused (400)."""
    try:
        return key_from_headers(request.headers)
    except InvalidKey:
        observability.record_invalid_key(scope)
        raise


def idempotent_request(
    runtime: Runtime,
    scope: str,
    key: str,
    fingerprint: str,
    source_ip: str,
    record: Callable[[], str],
) -> IdempotentRequest:
    """The engine's request; the record of it is kept only where the settings ask."""
    return IdempotentRequest(
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        source_ip=source_ip,
        request_body=record() if runtime.settings.store_request_bodies else None,
    )


class SenderLimit:
    """The per-sender limit for one message, counted when it refuses.

    Asked inside the idempotency scope, so a replay never counts against the sender's limit;
    and asked once: a transaction run again after a lost race (a deadlock, a key taken
    meanwhile) reuses the answer instead of counting the sender a second time.
    """

    def __init__(self, sender: str, *, exempt: bool = False) -> None:
        self.sender = sender
        # A re-drive was counted when the delivery first came: never refused for the limit.
        self._answer: bool | None = True if exempt else None

    async def allows(self, runtime: Runtime) -> bool:
        if self._answer is None:
            self._answer = await runtime.limits.allow_sender(self.sender)
            if not self._answer:
                observability.record_rate_limited("sender", self.sender)
        return self._answer


def count_created_order(source: str, order_id: int | None, result: Result) -> None:
    """Count an order where the transaction that created it committed: a rerun after a lost
    race, a replay or a duplicate under another key finds the order and creates nothing."""
    if order_id is not None and result.outcome in (Outcome.NEW, Outcome.TAKEOVER):
        observability.record_order_created(source, order_id)


def count_payment_event(provider: str, payment_result: str | None, result: Result) -> None:
    """Count what a payment event did, where its transaction committed (as orders above)."""
    if payment_result is not None and result.outcome in (Outcome.NEW, Outcome.TAKEOVER):
        observability.record_payment_event(provider, payment_result)
