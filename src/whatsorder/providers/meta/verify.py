"""Meta's webhook signature: ``X-Hub-Signature-256``, HMAC-SHA256 of the raw body."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_PREFIX = "sha256="


def sign(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` Meta sends with ``body`` (for ``whatsorder send``, tests)."""
    digest = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def signature_is_valid(app_secret: str, body: bytes, header: str) -> bool:
    """Meta's check: HMAC-SHA256 of the raw body bytes with the app secret, constant-time.

    No maintained library verifies Meta's webhook signature (unlike Twilio's, Stripe's or
    Razorpay's SDKs), so this is done here. It runs over the bytes as received, before any JSON
    parsing: re-serialised JSON would differ (key order, spacing, ``\\u`` escapes of non-ASCII).
    """
    if not header.startswith(SIGNATURE_PREFIX) or not header.isascii():
        return False  # compare_digest raises on non-ASCII text: that would be a 500
    given = header[len(SIGNATURE_PREFIX) :].strip().lower()
    return hmac.compare_digest(sign(app_secret, body)[len(SIGNATURE_PREFIX) :], given)
