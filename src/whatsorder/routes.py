"""The webhook routes' paths: the contract providers are configured with (and `whatsorder send`
and `pay` post to), named once for the web layer and the command line alike."""

from __future__ import annotations

from typing import Final

TWILIO_INBOUND: Final = "/api/v1/whatsapp/webhook"
TWILIO_STATUS: Final = "/api/v1/whatsapp/status"
META: Final = "/api/v1/whatsapp/meta/webhook"
STRIPE: Final = "/api/v1/payments/stripe/webhook"
RAZORPAY: Final = "/api/v1/payments/razorpay/webhook"
