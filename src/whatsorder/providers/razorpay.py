"""Razorpay's webhooks: signature, parsing events into payment events, keys.

Razorpay signs the raw body (``X-Razorpay-Signature``: hex HMAC-SHA256 with the webhook
secret) and names each delivery in ``x-razorpay-event-id``, the same on every retry: that is
the key. One payment may be announced twice (``payment.captured`` and ``order.paid``) and
``payment.failed`` may be followed by ``payment.captured``: the ledger's business keys and the
forward-only order states make both come out right. Refunds are posted by their own id, when
Razorpay says they were processed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import razorpay
from razorpay.errors import SignatureVerificationError

from whatsorder.ordering.payment_model import PaymentEvent, PaymentKind
from whatsorder.providers.payment_payload import (
    MalformedPayment,
    amount,
    currency,
    identifier,
    mapping,
    optional_mapping,
    order_reference,
    parse_object,
)

SOURCE = "razorpay"
WEBHOOK_TYPE = "razorpay"
SIGNATURE_HEADER = "X-Razorpay-Signature"
EVENT_ID_HEADER = "x-razorpay-event-id"

_SUCCEEDED = {"payment.captured", "order.paid"}
_FAILED = {"payment.failed"}
# A refund is asked for (created), then done (processed) or not (failed): money moves only
# when it is processed.
_REFUNDS = {
    "refund.created": PaymentKind.REFUND_PENDING,
    "refund.processed": PaymentKind.REFUNDED,
    "refund.failed": PaymentKind.REFUND_FAILED,
}


def sign(secret: str, body: bytes) -> str:
    """The signature Razorpay would send (for ``whatsorder pay`` and tests)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_is_valid(secret: str, body: str, signature: str) -> bool:
    """Razorpay's own check, over the body exactly as received (decoded as UTF-8)."""
    if not signature.isascii():  # compare_digest raises on non-ASCII text
        return False
    try:
        razorpay.Utility().verify_webhook_signature(body, signature, secret)
    except SignatureVerificationError:
        return False
    return True


def parse_event(body: str, event_id: str) -> tuple[str, PaymentEvent | None]:
    """The event's type and what it means for us (None: not our concern)."""
    event = parse_object(body)
    event_type = event.get("event")
    if not isinstance(event_type, str):
        raise MalformedPayment("The event has no event type.")
    payload = mapping(event, "payload")
    if event_type in _SUCCEEDED | _FAILED:
        payment = _entity(payload, "payment")
        order = _entity(payload, "order") if "order" in payload else {}
        return event_type, PaymentEvent(
            provider=SOURCE,
            event_id=event_id,
            kind=PaymentKind.SUCCEEDED if event_type in _SUCCEEDED else PaymentKind.FAILED,
            payment_id=identifier(payment, "id"),
            order_number=order_reference(
                optional_mapping(payment, "notes"), optional_mapping(order, "notes")
            ),
            amount=amount(payment, "amount"),
            currency=currency(payment),
        )
    if event_type in _REFUNDS:
        refund = _entity(payload, "refund")
        payment = _entity(payload, "payment") if "payment" in payload else {}
        return event_type, PaymentEvent(
            provider=SOURCE,
            event_id=event_id,
            kind=_REFUNDS[event_type],
            refund_id=identifier(refund, "id"),
            payment_id=identifier(refund, "payment_id"),
            order_number=order_reference(
                optional_mapping(refund, "notes"), optional_mapping(payment, "notes")
            ),
            amount=amount(refund, "amount"),
            currency=currency(refund),
        )
    return event_type, None


def _entity(payload: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return mapping(mapping(payload, name), "entity")
