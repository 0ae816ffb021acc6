"""Payment webhooks from Stripe and Razorpay, each applied once, through `webhooks.run`.

Keyed by the provider's event id, the handler applies the payment on the claim's own
transaction: the payment rows, the ledger entries and the idempotency record commit together.
Event types we do not act on are acknowledged with 200 and stored nowhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from whatsorder import routes
from whatsorder.clock import utcnow
from whatsorder.ordering.payment_model import PaymentEvent
from whatsorder.ordering.ports import UnitOfWork
from whatsorder.ordering.services.payments import apply_payment
from whatsorder.providers import razorpay, stripe
from whatsorder.web import webhooks
from whatsorder.web.answers import JSON_CONTENT_TYPE, json_stored
from whatsorder.web.openapi import RAZORPAY_EVENT, STRIPE_EVENT, WEBHOOK_REFUSALS, problems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime
from whatsorder.web.webhooks import Handled, Incoming, NotOurConcern, SignatureMismatch, Webhook
from whatsorder_idempotency import HandlerResult, fingerprint, validate_key

STRIPE_PATH = routes.STRIPE
RAZORPAY_PATH = routes.RAZORPAY

router = APIRouter(tags=["payments"])

_RESPONSES = {
    200: {"content": {JSON_CONTENT_TYPE: {}}, "description": "Received"},
    **problems(*WEBHOOK_REFUSALS),
}


@dataclass(frozen=True, slots=True)
class _Payment:
    """A verified payment event, with the fingerprint of the request that brought it."""

    event: PaymentEvent
    fingerprint: str

    @property
    def key(self) -> str:
        return self.event.event_id

    def summary(self) -> str:
        """The event in our terms, never the payload: that carries e-mails and phone numbers."""
        event = self.event
        return json.dumps(
            {
                "kind": event.kind.value,
                "payment_id": event.payment_id,
                "order": event.order_number,
                "amount": event.amount,
                "currency": event.currency,
            }
        )


async def _apply(_runtime: Runtime, payment: _Payment, uow: UnitOfWork) -> Handled:
    event = payment.event
    outcome = await apply_payment(uow, event, utcnow())
    answer = json_stored(
        {
            "received": True,
            "event_id": event.event_id,
            "result": outcome.result.value,
            "order": outcome.order_number,
            "order_status": None if outcome.order_status is None else outcome.order_status.value,
            "exceptions": [kind.value for kind in outcome.exceptions],
        }
    )
    notes = {"order_id": outcome.order_id}
    return Handled(HandlerResult(answer, notes), payment_result=outcome.result.value)


def _verify_stripe(incoming: Incoming) -> None:
    """Stripe's signature, then its replay window (400)."""
    try:
        stripe.verify(incoming.text(), incoming.signature, incoming.secret, time.time())
    except stripe.SignatureInvalid as error:
        raise SignatureMismatch() from error
    except stripe.OutsideReplayWindow as error:
        raise Problem(
            400, "outside-replay-window", "Outside the replay window", str(error)
        ) from error


def _parse_stripe(incoming: Incoming) -> _Payment:
    event = stripe.parse_event(incoming.text())
    if event.payment is None:
        raise NotOurConcern(event.event_id, event.type)
    # Fingerprinted by the event, not the delivery (see stripe.identity_of).
    digest = fingerprint("POST", incoming.path, event.identity, JSON_CONTENT_TYPE)
    return _Payment(event.payment, digest)


def _verify_razorpay(incoming: Incoming) -> None:
    if not razorpay.signature_is_valid(incoming.secret, incoming.text(), incoming.signature):
        raise SignatureMismatch()


def _parse_razorpay(incoming: Incoming) -> _Payment:
    headers = incoming.request.headers
    event_id = headers.get(razorpay.EVENT_ID_HEADER)
    if not event_id:
        raise Problem(
            400,
            "event-id-missing",
            "Event id missing",
            f"The {razorpay.EVENT_ID_HEADER} header names the delivery; it is missing.",
        )
    validate_key(event_id)
    event_type, payment = razorpay.parse_event(incoming.text(), event_id)
    if payment is None:
        raise NotOurConcern(event_id, event_type)
    digest = fingerprint("POST", incoming.path, incoming.body, headers.get("content-type"))
    return _Payment(payment, digest)


def _payment_webhook(
    provider: webhooks.Provider,
    webhook_type: str,
    path: str,
    parse: Callable[[Incoming], _Payment],
) -> Webhook[_Payment]:
    """A payment provider's webhook: keyed by its event id, applied by `apply_payment`."""
    return Webhook(
        provider=provider,
        type=webhook_type,
        path=path,
        parse=parse,
        key=lambda payment: payment.key,
        fingerprint=lambda payment, _: payment.fingerprint,
        record=_Payment.summary,
        handle=_apply,
    )


STRIPE = _payment_webhook(
    webhooks.Provider(
        name="Stripe",
        source=stripe.SOURCE,
        secret=lambda settings: settings.stripe_webhook_secret,
        variable="WHATSORDER_STRIPE_WEBHOOK_SECRET",
        signature_header=stripe.SIGNATURE_HEADER,
        verify=_verify_stripe,
    ),
    stripe.WEBHOOK_TYPE,
    STRIPE_PATH,
    _parse_stripe,
)
RAZORPAY = _payment_webhook(
    webhooks.Provider(
        name="Razorpay",
        source=razorpay.SOURCE,
        secret=lambda settings: settings.razorpay_webhook_secret,
        variable="WHATSORDER_RAZORPAY_WEBHOOK_SECRET",
        signature_header=razorpay.SIGNATURE_HEADER,
        verify=_verify_razorpay,
    ),
    razorpay.WEBHOOK_TYPE,
    RAZORPAY_PATH,
    _parse_razorpay,
)


@router.post(
    STRIPE_PATH, responses=_RESPONSES, openapi_extra=STRIPE_EVENT, summary="Stripe payment events"
)
async def stripe_webhook(request: Request) -> Response:
    return await webhooks.run(request, STRIPE)


@router.post(
    RAZORPAY_PATH,
    responses=_RESPONSES,
    openapi_extra=RAZORPAY_EVENT,
    summary="Razorpay payment events",
)
async def razorpay_webhook(request: Request) -> Response:
    return await webhooks.run(request, RAZORPAY)
