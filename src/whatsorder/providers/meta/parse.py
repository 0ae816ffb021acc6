"""Reading a signed Meta delivery into plain values (`whatsorder.providers.meta.delivery`).

Every field that reaches a bounded column or PostgreSQL text is checked here, so a signed but
unusable item becomes a dead letter (answered 200) rather than a database error (a 500 that
Meta would retry for seven days): identifiers are visible ASCII of a bounded length, free text
loses NUL, and anything of the wrong JSON type is refused or left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from whatsorder.providers.malformed import MalformedWebhook
from whatsorder.providers.meta.delivery import (
    CartItem,
    Delivery,
    MetaMessage,
    PreferenceChange,
    Rejected,
    StatusUpdate,
    canonical_json,
)
from whatsorder.providers.meta.preferences import LATEST_TIMESTAMP, parse_preferences
from whatsorder_idempotency import InvalidKey, validate_key

MAX_WAMID_CHARS = 200  # real ones are ~60; leaves room for "reply:" and ":status" in 255
MAX_SENDER_CHARS = 64  # retailers.whatsapp_id and outbox_messages.recipient
MAX_NAME_CHARS = 200  # retailers.name
MAX_STATUS_CHARS = 32  # message_statuses.status and .error_code

# A catalogue's retailer id as our products.sku can hold it: printable, at most 64 characters.
_PRODUCT_ID = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,64}")


def parse_delivery(body: bytes) -> Delivery:
    """The messages and statuses of a (verified) delivery.

    Raises `MalformedWebhook` when the body as a whole is unusable (not JSON, not a WhatsApp
    Business Account notification); a single unusable message or status is returned in
    ``rejected`` so that its siblings are still processed.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise MalformedWebhook("The body is not JSON.") from error
    if not isinstance(document, dict):
        raise MalformedWebhook("The body is not a JSON object.")
    if document.get("object") != "whatsapp_business_account":
        raise MalformedWebhook("The body is not a WhatsApp Business Account notification.")
    entries = document.get("entry")
    if not isinstance(entries, list):
        raise MalformedWebhook("The notification has no entry list.")
    messages: list[MetaMessage] = []
    statuses: list[StatusUpdate] = []
    rejected: list[Rejected] = []
    preferences: list[PreferenceChange] = []
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            rejected.append(Rejected("An entry has no changes list.", canonical_json(entry)))
            continue
        for change in changes:
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                rejected.append(Rejected("A change has no value object.", canonical_json(change)))
                continue
            field = change.get("field", "messages")
            if field == "user_preferences":
                parse_preferences(change["value"], preferences, rejected)
            elif field == "messages":
                _parse_value(change["value"], messages, statuses, rejected)
            # else: another subscription's notification (templates, account updates)
    return Delivery(tuple(messages), tuple(statuses), tuple(rejected), tuple(preferences))


def _parse_value(
    value: Mapping[str, Any],
    messages: list[MetaMessage],
    statuses: list[StatusUpdate],
    rejected: list[Rejected],
) -> None:
    contacts = _objects(value, "contacts", rejected)
    for message in _objects(value, "messages", rejected):
        try:
            messages.append(_message(message, contacts))
        except MalformedWebhook as error:
            rejected.append(Rejected(str(error), canonical_json(message)))
    for status in _objects(value, "statuses", rejected):
        try:
            statuses.append(_status(status))
        except MalformedWebhook as error:
            rejected.append(Rejected(str(error), canonical_json(status)))


def _objects(
    value: Mapping[str, Any], name: str, rejected: list[Rejected]
) -> list[Mapping[str, Any]]:
    items = value.get(name, [])
    if not isinstance(items, list):
        rejected.append(Rejected(f"{name} is not a list.", canonical_json(items)))
        return []
    good: list[Mapping[str, Any]] = [item for item in items if isinstance(item, dict)]
    for item in items:
        if not isinstance(item, dict):
            rejected.append(Rejected(f"An item of {name} is not an object.", canonical_json(item)))
    return good


def _message(message: Mapping[str, Any], contacts: Sequence[Mapping[str, Any]]) -> MetaMessage:
    wamid = _key_part(message.get("id"), "message id")
    wa_id = _optional_text(message.get("from"))
    user_id = _optional_text(message.get("from_user_id"))
    contact = _contact_of(contacts, wa_id, user_id)
    if contact is not None:
        wa_id = wa_id or _optional_text(contact.get("wa_id"))
        user_id = user_id or _optional_text(contact.get("user_id"))
    if wa_id is None and user_id is None:
        raise MalformedWebhook(f"Message {wamid} names no sender (wa_id or user_id).")
    if wa_id is not None:
        _check_identity(wa_id, "whatsapp:+")
    if user_id is not None:
        _check_identity(user_id, "")
    kind = _optional_text(message.get("type")) or "unknown"
    profile = contact.get("profile") if contact is not None else None
    name = _optional_text(profile.get("name")) if isinstance(profile, dict) else None
    return MetaMessage(
        wamid=wamid,
        wa_id=wa_id,
        user_id=user_id,
        profile_name=_storable(name or "").strip()[:MAX_NAME_CHARS],
        type=kind,
        text=_text_body(message) if kind == "text" else None,
        cart=_cart(message, wamid) if kind == "order" else None,
        canonical=canonical_json(message),
        sent_at=_sent_at(message.get("timestamp")),
    )


def _sent_at(value: object) -> datetime | None:
    """Meta's ``timestamp`` (Unix seconds, as a string): when the customer sent the message.
    None when it is missing or no time at all: the message is still processed, as received."""
    if isinstance(value, str) and value.strip().isdecimal() and len(value.strip()) <= 12:
        value = int(value.strip())  # short: int() refuses strings over 4300 digits
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= LATEST_TIMESTAMP:
        return None
    return datetime.fromtimestamp(value, UTC)


def _contact_of(
    contacts: Sequence[Mapping[str, Any]], wa_id: str | None, user_id: str | None
) -> Mapping[str, Any] | None:
    """The contact the message came from: matched by wa_id or user_id, or the only one."""
    for contact in contacts:
        if (wa_id is not None and contact.get("wa_id") == wa_id) or (
            user_id is not None and contact.get("user_id") == user_id
        ):
            return contact
    return contacts[0] if len(contacts) == 1 else None


def _check_identity(identity: str, prefix: str) -> None:
    # Phone digits, or a BSUID like "US.13491208655302741918": visible ASCII, and short
    # enough for our identity columns as we spell it (see MetaMessage.sender).
    try:
        validate_key(identity)
    except InvalidKey as error:
        raise MalformedWebhook(f"A sender id is unusable: {error}") from error
    if len(prefix + identity) > MAX_SENDER_CHARS:
        raise MalformedWebhook(f"A sender id is too long for {MAX_SENDER_CHARS} characters.")


def _text_body(message: Mapping[str, Any]) -> str:
    text = message.get("text")
    body = text.get("body") if isinstance(text, dict) else None
    if not isinstance(body, str):
        raise MalformedWebhook("A text message has no text.body.")
    return _storable(body)


def _cart(message: Mapping[str, Any], wamid: str) -> tuple[CartItem, ...]:
    order = message.get("order")
    items = order.get("product_items") if isinstance(order, dict) else None
    if not isinstance(items, list):
        raise MalformedWebhook(f"Order message {wamid} has no order.product_items list.")
    cart: list[CartItem] = []
    for item in items:
        if not isinstance(item, dict):
            raise MalformedWebhook(f"Order message {wamid} has an item that is not an object.")
        product = item.get("product_retailer_id")
        quantity = item.get("quantity")
        # Meta sends quantity as a number; a whole-number string is accepted as the same.
        if isinstance(quantity, str) and quantity.strip().isdecimal() and len(quantity) <= 12:
            quantity = int(quantity)  # short: int() raises on strings over 4300 digits
        if not isinstance(product, str) or not _PRODUCT_ID.fullmatch(product.strip()):
            raise MalformedWebhook(
                f"Order message {wamid} has an item without a usable product id."
            )
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise MalformedWebhook(f"Order message {wamid} has an item without a whole quantity.")
        cart.append(
            CartItem(
                product_retailer_id=product.strip(),
                quantity=quantity,
                item_price=_price(item.get("item_price")),
                currency=_optional_text(item.get("currency")),
            )
        )
    return tuple(cart)


def _price(value: object) -> Decimal | None:
    """Meta's ``item_price`` (a JSON number, often fractional) as an exact Decimal.

    ``Decimal(str(x))``, not ``Decimal(x)``: 35.5 stays 35.5, 0.1 does not become
    0.1000000000000000055511151231257827. Never used for money: we price from our catalogue.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    return price if price.is_finite() else None


def _status(status: Mapping[str, Any]) -> StatusUpdate:
    wamid = _key_part(status.get("id"), "status id")
    state = _optional_text(status.get("status"))
    if state is None:
        raise MalformedWebhook(f"Status of {wamid} has no status.")
    state = state.lower()
    try:
        validate_key(f"{wamid}:{state}")
    except InvalidKey as error:
        raise MalformedWebhook(f"Status of {wamid} has an unusable status: {error}") from error
    if len(state) > MAX_STATUS_CHARS:
        raise MalformedWebhook(f"Status of {wamid} is longer than {MAX_STATUS_CHARS} characters.")
    return StatusUpdate(
        wamid=wamid,
        status=state,
        recipient=_optional_text(status.get("recipient_id"))
        or _optional_text(status.get("recipient_user_id")),
        error_code=_error_code(status.get("errors")),
        canonical=canonical_json(status),
    )


def _error_code(errors: object) -> str | None:
    """The first error's code, kept for the record: a number or text, cut to fit its column."""
    first = errors[0] if isinstance(errors, list) and errors else None
    code = first.get("code") if isinstance(first, dict) else None
    if isinstance(code, bool) or not isinstance(code, int | str):
        return None  # Meta sends a number; anything else names no code we could look up
    return _storable(str(code)).strip()[:MAX_STATUS_CHARS] or None


def _key_part(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedWebhook(f"A {what} is missing.")
    try:
        key = validate_key(value)
    except InvalidKey as error:
        raise MalformedWebhook(f"A {what} is unusable: {error}") from error
    if len(key) > MAX_WAMID_CHARS:
        raise MalformedWebhook(f"A {what} is longer than {MAX_WAMID_CHARS} characters.")
    return key


def _storable(text: str) -> str:
    """``text`` without lone surrogates or NUL: JSON can spell both ("\\ud800", "\\u0000");
    UTF-8 cannot carry the first, PostgreSQL text not the second."""
    return text.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "")


def _optional_text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
