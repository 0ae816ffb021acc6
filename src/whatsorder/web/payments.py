"""Payment webhooks from Stripe and Razorpay (DESIGN.md §2 in order), each applied once.

Guards, signature (and Stripe's replay window), then the idempotency engine keyed by the
provider's event id, whose handler applies the payment on the claim's own connection: the
payment rows, the ledger entries and the idempotency record commit together. Event types we
do not act on are acknowledged with 200 and stored nowhere.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.clock import utcnow
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.idempotency import HandlerResult, IdempotentRequest, fingerprint, validate_key
from whatsorder.ordering.payment_model import PaymentEvent
from whatsorder.ordering.services.payments import apply_payment
from whatsorder.providers import razorpay, stripe
from whatsorder.providers.payment_payload import MalformedPayment
from whatsorder.web.openapi import RAZORPAY_EVENT, STRIPE_EVENT, WEBHOOK_REFUSALS, problems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime, runtime_of
from whatsorder.web.webhooks import (
    JSON_CONTENT_TYPE,
    Admitted,
    admit,
    json_stored,
    malformed_body,
    required_secret,
    signature_invalid,
    signature_of,
    to_response,
)

STRIPE_PATH = "/api/v1/payments/stripe/webhook"
RAZORPAY_PATH = "/api/v1/payments/razorpay/webhook"

router = APIRouter(tags=["payments"])

_RESPONSES = {
    200: {"content": {JSON_CONTENT_TYPE: {}}, "description": "Received"},
    **problems(*WEBHOOK_REFUSALS),
}


@router.post(
    STRIPE_PATH, responses=_RESPONSES, openapi_extra=STRIPE_EVENT, summary="Stripe payment events"
)
async def stripe_webhook(request: Request) -> Response:
    runtime = runtime_of(request)
    admitted = await admit(request, runtime)
    signing_secret = required_secret(
        runtime.settings.stripe_webhook_secret, "Stripe", "WHATSORDER_STRIPE_WEBHOOK_SECRET"
    )
    header = signature_of(request, stripe.SOURCE, stripe.SIGNATURE_HEADER)
    payload = _text(admitted.body)
    try:
        stripe.verify(payload, header, signing_secret, time.time())
    except stripe.SignatureInvalid as error:
        raise signature_invalid(stripe.SOURCE, stripe.SIGNATURE_HEADER) from error
    except stripe.OutsideReplayWindow as error:
        raise Problem(
            400, "outside-replay-window", "Outside the replay window", str(error)
        ) from error
    try:
        event = stripe.parse_event(payload)
    except MalformedPayment as error:
        raise _malformed(error) from error
    if event.payment is None:
        return _ignored(event.event_id, event.type)
    # Fingerprinted by the event, not the delivery (see stripe.identity_of).
    digest = fingerprint("POST", STRIPE_PATH, event.identity, JSON_CONTENT_TYPE)
    return await _apply(runtime, admitted, stripe.WEBHOOK_TYPE, event.payment, digest)


@router.post(
    RAZORPAY_PATH,
    responses=_RESPONSES,
    openapi_extra=RAZORPAY_EVENT,
    summary="Razorpay payment events",
)
async def razorpay_webhook(request: Request) -> Response:
    runtime = runtime_of(request)
    admitted = await admit(request, runtime)
    signing_secret = required_secret(
        runtime.settings.razorpay_webhook_secret, "Razorpay", "WHATSORDER_RAZORPAY_WEBHOOK_SECRET"
    )
    signature = signature_of(request, razorpay.SOURCE, razorpay.SIGNATURE_HEADER)
    body = _text(admitted.body)
    if not razorpay.signature_is_valid(signing_secret, body, signature):
        raise signature_invalid(razorpay.SOURCE, razorpay.SIGNATURE_HEADER)
    event_id = request.headers.get(razorpay.EVENT_ID_HEADER)
    if not event_id:
        raise Problem(
            400,
            "event-id-missing",
            "Event id missing",
            f"The {razorpay.EVENT_ID_HEADER} header names the delivery; it is missing.",
        )
    validate_key(event_id)
    try:
        event_type, payment = razorpay.parse_event(body, event_id)
    except MalformedPayment as error:
        raise _malformed(error) from error
    if payment is None:
        return _ignored(event_id, event_type)
    content_type = request.headers.get("content-type")
    digest = fingerprint("POST", RAZORPAY_PATH, admitted.body, content_type)
    return await _apply(runtime, admitted, razorpay.WEBHOOK_TYPE, payment, digest)


async def _apply(
    runtime: Runtime, admitted: Admitted, scope: str, payment: PaymentEvent, digest: str
) -> Response:
    idempotent = IdempotentRequest(
        scope=scope,
        key=payment.event_id,
        fingerprint=digest,
        source_ip=admitted.source_ip,
        # The event in our terms, never the payload: that carries e-mails and phone numbers.
        request_body=_summary(payment) if runtime.settings.store_request_bodies else None,
    )

    async def handle(connection: AsyncConnection) -> HandlerResult:
        outcome = await apply_payment(SqlUnitOfWork(connection), payment, utcnow())
        answer = json_stored(
            {
                "received": True,
                "event_id": payment.event_id,
                "result": outcome.result.value,
                "order": outcome.order_number,
                "order_status": None
                if outcome.order_status is None
                else outcome.order_status.value,
                "exceptions": [kind.value for kind in outcome.exceptions],
            }
        )
        return HandlerResult(answer, {"order_id": outcome.order_id})

    return to_response(await runtime.idempotency.execute(idempotent, handle))


def _text(body: bytes) -> str:
    """The body as the providers sign it: UTF-8 text, byte for byte."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise malformed_body() from error


def _ignored(event_id: str, event_type: str) -> Response:
    """A verified event we do not act on: acknowledged, so the provider stops sending it."""
    return JSONResponse({"received": True, "event_id": event_id, "ignored": event_type})


def _malformed(error: MalformedPayment) -> Problem:
    return Problem(400, "malformed-webhook", "Malformed webhook", str(error))


def _summary(payment: PaymentEvent) -> str:
    return json.dumps(
        {
            "kind": payment.kind.value,
            "payment_id": payment.payment_id,
            "order": payment.order_number,
            "amount": payment.amount,
            "currency": payment.currency,
        }
    )
