"""Twilio's WhatsApp webhooks: signature, parsing into commands, keys and TwiML replies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from whatsorder.ordering.model import InboundMessage
from whatsorder.privacy import mask_phone
from whatsorder.providers.malformed import MalformedWebhook
from whatsorder_idempotency import InvalidKey, validate_key

SOURCE = "twilio"
WEBHOOK_TYPE_INBOUND = "twilio_inbound"
WEBHOOK_TYPE_STATUS = "twilio_status"
SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_TOKEN_HEADER = "I-Twilio-Idempotency-Token"  # noqa: S105 (a header name)
TWIML_CONTENT_TYPE = "text/xml; charset=utf-8"

MAX_MESSAGE_CHARS = 1600  # Twilio refuses longer WhatsApp bodies (error 21617)
MAX_SENDER_CHARS = 64  # retailers.whatsapp_id
MAX_STATUS_CHARS = 32  # message_statuses.status and .error_code

# Fields Twilio adds when it posts a message again to the fallback URL after the primary
# failed: the same message, so they must not make the retry look like another request.
RETRY_ONLY_FIELDS = frozenset({"ErrorCode", "ErrorUrl"})

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class FormParams(dict[str, list[str]]):
    """Form fields with repeated names kept, in the shape RequestValidator reads (``getlist``)."""

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> FormParams:
        params = cls()
        for name, value in pairs:
            params.setdefault(name, []).append(value)
        return params

    def getlist(self, name: str) -> list[str]:
        return self.get(name, [])

    def first(self, name: str) -> str | None:
        values = self.get(name)
        return values[0] if values else None


def signature_is_valid(auth_token: str, url: str, params: FormParams, signature: str) -> bool:
    """Twilio's own check: HMAC-SHA1 over the public URL and every field, blank ones too."""
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def sign(auth_token: str, url: str, params: FormParams) -> str:
    """The signature Twilio would send for this request (for ``whatsorder send`` and tests)."""
    return str(RequestValidator(auth_token).compute_signature(url, params))


def refuse_unstorable(pairs: Iterable[tuple[str, str]]) -> None:
    """Raise `MalformedWebhook` for a NUL anywhere in the form.

    Twilio never sends one (WhatsApp text cannot carry it), PostgreSQL text cannot hold one,
    and a stored request body would carry it: refused up front, naming the field, on every
    database and whatever is stored.
    """
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            shown = name.replace("\x00", "\\0")[:64]
            raise MalformedWebhook(f"The field {shown!r} contains a NUL character.")


def fingerprint_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields that say what an inbound message is: all but the fallback's own additions."""
    return [(name, value) for name, value in pairs if name not in RETRY_ONLY_FIELDS]


def provider_token(value: str | None) -> str | None:
    """``I-Twilio-Idempotency-Token`` as noted on the record; raises `MalformedWebhook`.

    The header is not covered by the signature, so it is checked like any key (1-255 visible
    ASCII characters) before a column sees it.
    """
    if value is None:
        return None
    try:
        return validate_key(value)
    except InvalidKey as error:
        raise MalformedWebhook(f"{IDEMPOTENCY_TOKEN_HEADER} is not usable: {error}") from error


def _required(params: FormParams, name: str) -> str:
    value = params.first(name)
    if not value:
        raise MalformedWebhook(f"The webhook has no {name}.")
    return value


def _identifier(params: FormParams, name: str, limit: int) -> str:
    """A field that becomes a key or an identity column: 1-``limit`` visible ASCII characters.

    Twilio's ids and addresses always are; anything else is refused here with a 400 rather
    than by the database with a 500 (PostgreSQL refuses NUL and over-long values).
    """
    value = _required(params, name)
    try:
        validate_key(value)
    except InvalidKey as error:
        raise MalformedWebhook(f"{name} is not usable: {error}") from error
    if len(value) > limit:
        raise MalformedWebhook(f"{name} is longer than {limit} characters.")
    return value


def message_key(params: FormParams) -> str:
    """The idempotency key of an inbound message: its ``MessageSid``."""
    return _identifier(params, "MessageSid", 255)


def status_key(params: FormParams) -> str:
    """A status callback's key: ``MessageSid:MessageStatus`` (each state arrives once)."""
    update = status_update(params)
    return f"{update.message_id}:{update.status}"


def inbound_message(params: FormParams) -> InboundMessage:
    return InboundMessage(
        source=SOURCE,
        message_id=message_key(params),
        sender=_identifier(params, "From", MAX_SENDER_CHARS),
        sender_name=_text(params, "ProfileName").strip()[:200],
        text=_text(params, "Body"),
    )


def _text(params: FormParams, name: str) -> str:
    return params.first(name) or ""


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    message_id: str
    status: str
    error_code: str | None


def status_update(params: FormParams) -> StatusUpdate:
    message_id = _identifier(params, "MessageSid", 255 - MAX_STATUS_CHARS - 1)
    status = _identifier(params, "MessageStatus", MAX_STATUS_CHARS).lower()
    return StatusUpdate(
        message_id=message_id,
        status=status,
        error_code=_text(params, "ErrorCode")[:MAX_STATUS_CHARS] or None,
    )


def twiml(text: str | None) -> bytes:
    """A TwiML reply, or an empty ``<Response/>`` for nothing to say.

    Characters XML cannot carry are dropped, and a reply longer than WhatsApp's 1,600
    characters goes out as several messages, split between lines where it can be.
    """
    response = MessagingResponse()
    for part in split_message(_XML_INVALID.sub("", text or "")):
        response.message(part)
    return str(response).encode()


def split_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at line ends where possible."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest:
        parts.append(rest)
    return parts


def redacted(pairs: Iterable[tuple[str, str]]) -> str:
    """The form as text for the record, with phone numbers masked (`whatsorder.privacy`)."""
    return "&".join(f"{name}={mask_phone(value)}" for name, value in pairs)
