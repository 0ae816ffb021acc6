"""Twilio's WhatsApp routes: inbound messages and status callbacks (DESIGN.md §2 in order)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.idempotency import (
    HandlerResult,
    IdempotentRequest,
    InvalidKey,
    Outcome,
    StoredResponse,
    form_fingerprint,
    key_from_headers,
)
from whatsorder.ordering import replies, services
from whatsorder.providers import twilio
from whatsorder.web import webhooks
from whatsorder.web.openapi import TWILIO_INBOUND, TWILIO_STATUS, WEBHOOK_REFUSALS, problems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime, runtime_of

INBOUND_PATH = "/api/v1/whatsapp/webhook"
STATUS_PATH = "/api/v1/whatsapp/status"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

router = APIRouter(tags=["twilio"])

_RESPONSES = {
    200: {"content": {"text/xml": {}}, "description": "TwiML reply"},
    **problems(*WEBHOOK_REFUSALS, 415),
}


def twiml_response(text: str | None, status: int = 200) -> StoredResponse:
    return StoredResponse(
        status, twilio.twiml(text), (("content-type", twilio.TWIML_CONTENT_TYPE),)
    )


class _Verified:
    """A Twilio request that passed every guard and its signature check."""

    def __init__(self, pairs: list[tuple[str, str]], source_ip: str) -> None:
        self.pairs = pairs
        self.params = twilio.FormParams.of(pairs)
        self.source_ip = source_ip


async def _verify(request: Request, runtime: Runtime, path: str) -> _Verified:
    settings = runtime.settings
    admitted = await webhooks.admit(request, runtime)
    token = webhooks.required_secret(
        settings.twilio_auth_token, "Twilio", "WHATSORDER_TWILIO_AUTH_TOKEN"
    )
    signature = webhooks.signature_of(request, twilio.SOURCE, twilio.SIGNATURE_HEADER)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"Expected {FORM_CONTENT_TYPE}.",
        )
    try:
        text = admitted.body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise webhooks.malformed_body() from error
    pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    params = twilio.FormParams.of(pairs)
    # Twilio signs the URL it called, query string included.
    query = request.url.query
    signed_url = settings.public_url_for(path) + (f"?{query}" if query else "")
    if not twilio.signature_is_valid(token, signed_url, params, signature):
        raise webhooks.signature_invalid(
            twilio.SOURCE,
            twilio.SIGNATURE_HEADER,
            "X-Twilio-Signature does not match this request and the configured public URL.",
        )
    try:
        twilio.refuse_unstorable(pairs)
    except twilio.MalformedWebhook as error:
        raise _malformed(error) from error
    return _Verified(pairs, admitted.source_ip)


def _idempotent_request(
    request: Request, runtime: Runtime, verified: _Verified, scope: str, derived_key: str, path: str
) -> IdempotentRequest:
    try:
        key = key_from_headers(request.headers) or derived_key
    except InvalidKey:
        observability.record_invalid_key(scope)
        raise
    return IdempotentRequest(
        scope=scope,
        key=key,
        fingerprint=form_fingerprint("POST", path, twilio.fingerprint_pairs(verified.pairs)),
        source_ip=verified.source_ip,
        request_body=twilio.redacted(verified.pairs)
        if runtime.settings.store_request_bodies
        else None,
    )


def _malformed(error: twilio.MalformedWebhook) -> Problem:
    return Problem(400, "malformed-webhook", "Malformed webhook", str(error))


@router.post(
    INBOUND_PATH,
    responses=_RESPONSES,
    openapi_extra=TWILIO_INBOUND,
    summary="Twilio inbound WhatsApp message",
)
async def inbound(request: Request) -> Response:
    observability.bind(webhook_type=twilio.WEBHOOK_TYPE_INBOUND)
    runtime = runtime_of(request)
    verified = await _verify(request, runtime, INBOUND_PATH)
    try:
        message = twilio.inbound_message(verified.params)
        provider_token = twilio.provider_token(request.headers.get(twilio.IDEMPOTENCY_TOKEN_HEADER))
    except twilio.MalformedWebhook as error:
        raise _malformed(error) from error
    idempotent = _idempotent_request(
        request, runtime, verified, twilio.WEBHOOK_TYPE_INBOUND, message.message_id, INBOUND_PATH
    )
    created_order: int | None = None

    async def handle(connection: AsyncConnection) -> HandlerResult:
        nonlocal created_order
        notes: dict[str, object] = {"provider_token": provider_token}
        # Inside the idempotency scope: a replay never counts against the sender's limit.
        if not await runtime.limits.allow_sender(message.sender):
            observability.record_rate_limited("sender", message.sender)
            return HandlerResult(twiml_response(replies.RATE_LIMITED), notes)
        outcome = await services.receive_message(SqlUnitOfWork(connection), message, utcnow())
        notes.update(retailer_id=outcome.retailer_id, order_id=outcome.order_id)
        if outcome.refused:
            # Not kept: the message id's key stays free for its own sender's retries.
            refusal = _message_id_taken(message.message_id).stored()
            return HandlerResult(refusal, notes, keep=False)
        created_order = outcome.order_id if outcome.created else None
        return HandlerResult(twiml_response(outcome.reply), notes)

    result = await runtime.idempotency.execute(idempotent, handle)
    # Counted where the transaction that created the order committed: a rerun after a lost
    # race, a replay or a duplicate under another key finds the order and creates nothing.
    if created_order is not None and result.outcome in (Outcome.NEW, Outcome.TAKEOVER):
        observability.record_order_created(twilio.SOURCE, created_order)
    return webhooks.to_response(result)


def _message_id_taken(message_id: str) -> Problem:
    return Problem(
        422,
        "message-id-taken",
        "Message id belongs to another sender",
        f"MessageSid {message_id} is already the id of a message from another sender; this "
        "request was not processed. Nothing was ordered.",
    )


@router.post(
    STATUS_PATH,
    responses=_RESPONSES,
    openapi_extra=TWILIO_STATUS,
    summary="Twilio message status callback",
)
async def status_callback(request: Request) -> Response:
    observability.bind(webhook_type=twilio.WEBHOOK_TYPE_STATUS)
    runtime = runtime_of(request)
    verified = await _verify(request, runtime, STATUS_PATH)
    try:
        update = twilio.status_update(verified.params)
        derived_key = twilio.status_key(verified.params)
    except twilio.MalformedWebhook as error:
        raise _malformed(error) from error
    idempotent = _idempotent_request(
        request, runtime, verified, twilio.WEBHOOK_TYPE_STATUS, derived_key, STATUS_PATH
    )

    async def handle(connection: AsyncConnection) -> HandlerResult:
        await services.record_message_status(
            SqlUnitOfWork(connection),
            twilio.SOURCE,
            update.message_id,
            update.status,
            update.error_code,
            utcnow(),
        )
        return HandlerResult(twiml_response(None))

    return webhooks.to_response(await runtime.idempotency.execute(idempotent, handle))
