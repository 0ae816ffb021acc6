"""Meta's WhatsApp Cloud API: the signature (`verify`), a delivery read into plain values
(`delivery`, `parse`), and the body of a reply we send (`send`).

The names the rest of whatsorder uses are here, so callers write ``meta.parse_delivery``.
"""

from whatsorder.privacy import redacted
from whatsorder.providers.malformed import MalformedWebhook
from whatsorder.providers.meta.delivery import (
    SILENT_TYPES,
    SOURCE,
    WEBHOOK_TYPE_DEAD_LETTER,
    WEBHOOK_TYPE_MESSAGE,
    WEBHOOK_TYPE_PREFERENCE,
    WEBHOOK_TYPE_STATUS,
    CartItem,
    Delivery,
    MetaMessage,
    PreferenceChange,
    Rejected,
    StatusUpdate,
    canonical_json,
)
from whatsorder.providers.meta.parse import parse_delivery
from whatsorder.providers.meta.send import MAX_TEXT_CHARS, send_payload, text_parts
from whatsorder.providers.meta.verify import SIGNATURE_HEADER, sign, signature_is_valid

__all__ = [
    "MAX_TEXT_CHARS",
    "SIGNATURE_HEADER",
    "SILENT_TYPES",
    "SOURCE",
    "WEBHOOK_TYPE_DEAD_LETTER",
    "WEBHOOK_TYPE_MESSAGE",
    "WEBHOOK_TYPE_PREFERENCE",
    "WEBHOOK_TYPE_STATUS",
    "CartItem",
    "Delivery",
    "MalformedWebhook",
    "MetaMessage",
    "PreferenceChange",
    "Rejected",
    "StatusUpdate",
    "canonical_json",
    "parse_delivery",
    "redacted",
    "send_payload",
    "sign",
    "signature_is_valid",
    "text_parts",
]
