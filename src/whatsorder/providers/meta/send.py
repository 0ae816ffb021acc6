"""Meta's side of a reply: the Cloud API's send-message body, cut to its length limit."""

from __future__ import annotations

from typing import Any

from whatsorder.providers.twilio import split_message

MAX_TEXT_CHARS = 4096  # Cloud API limit on a text message's body


def text_parts(text: str) -> list[str]:
    """A reply in pieces of at most 4,096 characters, cut at line ends where possible."""
    return split_message(text, MAX_TEXT_CHARS)


def send_payload(recipient: str, text: str) -> dict[str, Any]:
    """The Cloud API's send-message body for a text reply.

    Phone numbers go in ``to``; a business-scoped user id (BSUID, ``CC.digits``) in
    ``recipient``, where Meta takes it for users without a known number.
    """
    address = {"to": recipient} if recipient.isdigit() else {"recipient": recipient}
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        **address,
        "type": "text",
        "text": {"preview_url": False, "body": text},
    }
