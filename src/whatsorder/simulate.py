"""Requests signed exactly as each provider signs them, for trying the service by hand.

``whatsorder send`` and ``whatsorder pay`` build their requests here; the signing itself is the
providers' own code (twilio's RequestValidator, our Meta check's counterpart).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from whatsorder import routes
from whatsorder.providers import meta, twilio

# The development secrets `make run` serves with, by provider, so `send` and `pay` work against
# it with no set-up.
DEVELOPMENT_SECRETS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "twilio": "dev-twilio-auth-token",
        "meta": "dev-meta-app-secret",
        "stripe": "whsec_dev_stripe_secret",
        "razorpay": "dev-razorpay-webhook-secret",
    }
)


@dataclass(frozen=True)
class SignedRequest:
    url: str
    body: bytes
    headers: dict[str, str]
    message_id: str


def twilio_message(
    base_url: str, text: str, *, sender: str, name: str, auth_token: str, sid: str | None = None
) -> SignedRequest:
    """An inbound WhatsApp message as Twilio posts it, signed over the URL and every field."""
    from urllib.parse import urlencode

    url = base_url.rstrip("/") + routes.TWILIO_INBOUND
    sid = sid or "SM" + secrets.token_hex(16)
    pairs = [
        ("MessageSid", sid),
        ("SmsMessageSid", sid),
        ("AccountSid", "AC" + "0" * 32),
        ("From", sender),
        ("To", "whatsapp:+14155238886"),
        ("WaId", sender.removeprefix("whatsapp:").lstrip("+")),
        ("ProfileName", name),
        ("Body", text),
        ("NumMedia", "0"),
        ("MessageType", "text"),
        ("ApiVersion", "2010-04-01"),
    ]
    signature = twilio.sign(auth_token, url, twilio.FormParams.of(pairs))
    headers = {
        twilio.SIGNATURE_HEADER: signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return SignedRequest(url, urlencode(pairs).encode(), headers, sid)


def meta_message(
    base_url: str, text: str, *, sender: str, name: str, app_secret: str, wamid: str | None = None
) -> SignedRequest:
    """A Cloud API delivery of one text message, signed over its raw bytes."""

    wa_id = sender.removeprefix("whatsapp:").lstrip("+")
    wamid = wamid or "wamid." + secrets.token_hex(16)
    document = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "0",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000000",
                                "phone_number_id": "0",
                            },
                            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": wamid,
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    body = json.dumps(document, ensure_ascii=False).encode()
    headers = {
        "X-Hub-Signature-256": meta.sign(app_secret, body),
        "Content-Type": "application/json",
    }
    return SignedRequest(base_url.rstrip("/") + routes.META, body, headers, wamid)


def stripe_payment(
    base_url: str, order_number: str, amount: int, currency: str, *, secret: str
) -> SignedRequest:
    """A ``payment_intent.succeeded`` event for the order, signed ``t=…,v1=…`` as Stripe does."""
    from whatsorder.providers import stripe

    event_id = "evt_" + secrets.token_hex(12)
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_" + secrets.token_hex(12),
                "object": "payment_intent",
                "amount": amount,
                "currency": currency.lower(),
                "status": "succeeded",
                "metadata": {"order_id": order_number},
            }
        },
    }
    payload = json.dumps(event)
    headers = {
        stripe.SIGNATURE_HEADER: stripe.sign(secret, payload, int(time.time())),
        "Content-Type": "application/json",
    }
    return SignedRequest(base_url.rstrip("/") + routes.STRIPE, payload.encode(), headers, event_id)


def razorpay_payment(
    base_url: str, order_number: str, amount: int, currency: str, *, secret: str
) -> SignedRequest:
    """A ``payment.captured`` event for the order, signed over the raw body as Razorpay does."""
    from whatsorder.providers import razorpay

    event_id = secrets.token_hex(10)
    event = {
        "entity": "event",
        "account_id": "acc_dev",
        "event": "payment.captured",
        "contains": ["payment"],
        "payload": {
            "payment": {
                "entity": {
                    "id": "pay_" + secrets.token_hex(7),
                    "entity": "payment",
                    "amount": amount,
                    "currency": currency.upper(),
                    "status": "captured",
                    "captured": True,
                    "notes": {"order_id": order_number},
                }
            }
        },
        "created_at": int(time.time()),
    }
    body = json.dumps(event).encode()
    headers = {
        razorpay.SIGNATURE_HEADER: razorpay.sign(secret, body),
        razorpay.EVENT_ID_HEADER: event_id,
        "Content-Type": "application/json",
    }
    return SignedRequest(base_url.rstrip("/") + routes.RAZORPAY, body, headers, event_id)
