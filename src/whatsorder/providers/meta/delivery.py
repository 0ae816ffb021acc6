"""What a Meta delivery carries, in plain values: messages, statuses, the parts refused.

One delivery (``entry`` → ``changes`` → ``value``) may carry many messages and statuses, and a
retry may batch them differently, so nothing here is keyed by the delivery: each message is
keyed by its ``wamid``; a status needs no key, its effect only ever moves forward.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from whatsorder.ordering.model import InboundMessage, RequestedLine

SOURCE = "meta"
WEBHOOK_TYPE_MESSAGE = "meta_message"
WEBHOOK_TYPE_STATUS = "meta_status"
WEBHOOK_TYPE_DEAD_LETTER = "meta_dead_letter"
WEBHOOK_TYPE_PREFERENCE = "meta_preference"

# Messages that carry no request from the customer: acknowledged, never answered.
SILENT_TYPES = frozenset({"reaction", "system"})


@dataclass(frozen=True, slots=True)
class CartItem:
    """One line of a catalogue cart. ``item_price`` is Meta's, kept for the record only."""

    product_retailer_id: str
    quantity: int
    item_price: Decimal | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class MetaMessage:
    """A customer's message, with who sent it as the delivery's ``contacts`` name them."""

    wamid: str
    wa_id: str | None  # the phone number, absent for users who hide it behind a username
    user_id: str | None  # the business-scoped user id (BSUID)
    profile_name: str
    type: str
    text: str | None  # type "text"
    cart: tuple[CartItem, ...] | None  # type "order"
    canonical: bytes  # the message's own JSON, canonical: what its fingerprint covers
    sent_at: datetime | None = None  # its "timestamp": when the customer sent it

    @property
    def key(self) -> str:
        """The idempotency key of everything this message causes."""
        return self.wamid

    @property
    def address(self) -> str:
        """Where Meta delivers our reply: the phone number, else the BSUID."""
        address = self.wa_id or self.user_id
        assert address is not None  # parse_delivery refuses messages with neither
        return address

    @property
    def sender(self) -> str:
        """Our retailer identity: ``whatsapp:+<E.164>`` as Twilio spells it, else the BSUID.

        Spelled like Twilio's ``From`` so a retailer keeps one account (orders, balance,
        STATUS) whichever provider brings its messages.
        """
        return f"whatsapp:+{self.wa_id}" if self.wa_id else self.address

    @property
    def silent(self) -> bool:
        return self.type in SILENT_TYPES

    def inbound(self) -> InboundMessage:
        """The message for the service layer. Media and other types read as empty text,
        which the grammar answers the way it answers Twilio's media messages."""
        return InboundMessage(
            source=SOURCE,
            message_id=self.wamid,
            sender=self.sender,
            sender_name=self.profile_name,
            text=self.text or "",
            sent_at=self.sent_at,
        )

    def requested_lines(self) -> tuple[RequestedLine, ...]:
        """The cart as the customer asked for it; prices are deliberately left behind."""
        return tuple(
            RequestedLine(item.product_retailer_id, item.quantity) for item in self.cart or ()
        )


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What Meta says happened to a message we sent."""

    wamid: str
    status: str
    recipient: str | None
    error_code: str | None
    canonical: bytes  # the status's own JSON, canonical: what its chunk's fingerprint covers


@dataclass(frozen=True, slots=True)
class Rejected:
    """A part of a signed delivery that cannot be processed; kept as a dead letter."""

    reason: str
    fragment: bytes  # canonical JSON of the part


@dataclass(frozen=True, slots=True)
class PreferenceChange:
    """The customer stopped or resumed marketing messages in WhatsApp itself (the
    ``user_preferences`` field): consent, recorded like their STOP or START."""

    wa_id: str
    profile_name: str
    stops: bool  # "stop"; else "resume"
    occurred_at: datetime
    detail: str | None
    reference: str  # "<wa_id>:<value>:<timestamp>": the same change redelivered, the same
    canonical: bytes

    @property
    def key(self) -> str:
        """The idempotency key of recording it: the reference's hash, as the reference holds
        the customer's number and keys are shown to operators."""
        return "preference:" + hashlib.sha256(self.reference.encode()).hexdigest()

    @property
    def sender(self) -> str:
        """Our retailer identity, spelled as `MetaMessage.sender` spells it."""
        return f"whatsapp:+{self.wa_id}"


@dataclass(frozen=True, slots=True)
class Delivery:
    messages: tuple[MetaMessage, ...]
    statuses: tuple[StatusUpdate, ...]
    rejected: tuple[Rejected, ...]
    preferences: tuple[PreferenceChange, ...] = ()


def canonical_json(value: object) -> bytes:
    """One spelling per JSON value: sorted keys, no spaces, UTF-8 (not ``\\u`` escapes)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # JSON may spell lone surrogates ("\ud800"): kept distinct, not refused.
    return text.encode("utf-8", errors="surrogatepass")
