"""Stripe's webhooks: signature and replay window, parsing events into payment events, keys.

Stripe signs ``"{t}.{raw body}"`` with HMAC-SHA256 and sends ``Stripe-Signature: t=…,v1=…``,
with one ``v1`` per active secret while a secret is being rolled. The library checks the
signature; the replay window is ours, because the library only refuses timestamps that are too
old, never ones from the future. Events are keyed by their ``id``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe

from whatsorder.ordering.payment_model import PaymentEvent, PaymentKind, Refund
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

SOURCE = "stripe"
WEBHOOK_TYPE = "stripe"
SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300

# Checkout sessions paid by card are "paid" at completion; delayed methods (bank debits) are
# "unpaid" then, and their money is announced by async_payment_succeeded.
_CHECKOUT_PAID = "paid"


class SignatureInvalid(Exception):
    """No ``v1`` signature in the header matches the body under the secret."""


class OutsideReplayWindow(Exception):
    """A correctly signed request whose timestamp is too old or too far in the future."""


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """A verified event: its key, its type, and what it means for us (None: not our concern)."""

    event_id: str
    type: str
    payment: PaymentEvent | None
    identity: bytes  # what "the same event" means for the fingerprint (see `identity_of`)


def sign(secret: str, payload: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe would send (for ``whatsorder pay`` and tests)."""
    return str(stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp))


def verify(payload: str, header: str, secret: str, now: float) -> None:
    """Raise `SignatureInvalid` or `OutsideReplayWindow` unless Stripe sent this just now.

    The signature comes first: a forged request learns nothing about our clock.
    """
    if not header.isascii():  # the library's compare_digest raises on non-ASCII text
        raise SignatureInvalid("The signature header is not ASCII.")
    try:
        # tolerance=None: signature only; the window is checked below, in both directions.
        stripe.WebhookSignature.verify_header(payload, header, secret, None)
    except stripe.SignatureVerificationError as error:
        raise SignatureInvalid(str(error)) from error
    signed_at = _timestamp(header)
    if signed_at < now - TOLERANCE_SECONDS:
        raise OutsideReplayWindow(
            f"The signature is {int(now - signed_at)} s old; the limit is {TOLERANCE_SECONDS} s."
        )
    if signed_at > now + TOLERANCE_SECONDS:
        raise OutsideReplayWindow(
            f"The signature is dated {int(signed_at - now)} s ahead; "
            f"the limit is {TOLERANCE_SECONDS} s."
        )


def _timestamp(header: str) -> int:
    """The header's first ``t=``, as the library reads it (it has already parsed it once)."""
    for item in header.split(","):
        parts = item.split("=", 2)
        if parts[0] == "t":
            return int(parts[1])
    raise SignatureInvalid("The signature header has no timestamp.")


def parse_event(payload: str) -> StripeEvent:
    """The verified body as a `StripeEvent`; raises `MalformedPayment`."""
    event = parse_object(payload)
    event_id = identifier(event, "id")
    event_type = event.get("type")
    if not isinstance(event_type, str):
        raise MalformedPayment("The event has no type.")
    obj = mapping(mapping(event, "data"), "object")
    return StripeEvent(
        event_id, event_type, _payment(event_id, event_type, obj), identity_of(event)
    )


def identity_of(event: Mapping[str, Any]) -> bytes:
    """The event without what changes from one delivery of it to the next.

    ``pending_webhooks`` counts endpoints still waiting for this event, so a retry may carry
    another number: fingerprinting the raw bytes would answer Stripe's own retry with 422.
    """
    stable = {name: value for name, value in event.items() if name != "pending_webhooks"}
    return json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _payment(event_id: str, event_type: str, obj: Mapping[str, Any]) -> PaymentEvent | None:
    metadata = optional_mapping(obj, "metadata")
    if event_type in {"payment_intent.succeeded", "payment_intent.payment_failed"}:
        succeeded = event_type == "payment_intent.succeeded"
        # What was actually captured, where the event says (older fixtures carry amount only).
        received = "amount_received" if succeeded and "amount_received" in obj else "amount"
        return PaymentEvent(
            provider=SOURCE,
            event_id=event_id,
            kind=PaymentKind.SUCCEEDED if succeeded else PaymentKind.FAILED,
            payment_id=identifier(obj, "id"),
            order_number=order_reference(metadata),
            amount=amount(obj, received),
            currency=currency(obj),
        )
    if event_type in {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
    }:
        failed = event_type == "checkout.session.async_payment_failed"
        if not failed and obj.get("payment_status") != _CHECKOUT_PAID:
            return None  # no money yet (or none to come): async_payment_* will tell
        return PaymentEvent(
            provider=SOURCE,
            event_id=event_id,
            kind=PaymentKind.FAILED if failed else PaymentKind.SUCCEEDED,
            # The payment intent, so that its own payment_intent.succeeded posts nothing more.
            payment_id=identifier(obj, "payment_intent" if obj.get("payment_intent") else "id"),
            order_number=order_reference(metadata),
            amount=amount(obj, "amount_total"),
            currency=currency(obj),
        )
    if event_type == "charge.refunded":
        # amount_refunded is the charge's refunded total so far, not this refund's amount.
        return PaymentEvent(
            provider=SOURCE,
            event_id=event_id,
            kind=PaymentKind.REFUNDED,
            payment_id=identifier(obj, "payment_intent" if obj.get("payment_intent") else "id"),
            order_number=order_reference(metadata),
            amount=amount(obj, "amount_refunded"),
            currency=currency(obj),
            refunds=_listed_refunds(obj),
        )
    return None


def _listed_refunds(charge: Mapping[str, Any]) -> tuple[Refund, ...]:
    """The charge's refunds, oldest first, where the API version still lists them.

    Stripe lists them newest first; failed and canceled ones took no money back. Anything
    unreadable is left out: the refunded total alone still posts the right amount.
    """
    listing = charge.get("refunds")
    data = listing.get("data") if isinstance(listing, Mapping) else None
    if not isinstance(data, list):
        return ()
    found: list[tuple[int, Refund]] = []
    for item in data:
        if not isinstance(item, Mapping) or item.get("status") in {"failed", "canceled"}:
            continue
        try:
            refund = Refund(identifier(item, "id"), amount(item, "amount"))
        except MalformedPayment:
            continue
        created = item.get("created")
        found.append((created if isinstance(created, int) else 0, refund))
    found.reverse()  # newest first as listed; ties in `created` keep that order reversed
    return tuple(refund for _, refund in sorted(found, key=lambda pair: pair[0]))
