"""Meta's ``user_preferences`` field: a customer stopped or resumed marketing messages.

A change of the field's value reads (Meta's WhatsApp Cloud API webhook reference)::

    {"contacts": [{"profile": {"name": "…"}, "wa_id": "16505551234"}],
     "user_preferences": [{"wa_id": "16505551234", "detail": "User requested to stop
       marketing messages", "category": "marketing_messages", "value": "stop",
       "timestamp": 1731705721}]}

It carries no message id, so a change is named by ``<wa_id>:<value>:<timestamp>``: Meta's
redelivery of it has the same, and the consent ledger keeps it once under that name. A
preference we cannot read whole (another category, another value, no time) is refused, and
kept as a dead letter like any part of a delivery we cannot process.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from whatsorder.providers.malformed import MalformedWebhook
from whatsorder.providers.meta.delivery import PreferenceChange, Rejected, canonical_json
from whatsorder_idempotency import InvalidKey, validate_key

CATEGORY = "marketing_messages"
VALUES = {"stop": True, "resume": False}  # value → stops
MAX_WA_ID_CHARS = 64 - len("whatsapp:+")  # retailers.whatsapp_id as we spell it
MAX_NAME_CHARS = 200  # retailers.name
LATEST_TIMESTAMP = 253402300799  # 9999-12-31: later ones are no time a datetime holds


def parse_preferences(
    value: Mapping[str, Any], preferences: list[PreferenceChange], rejected: list[Rejected]
) -> None:
    """Each preference of a ``user_preferences`` change's value, or why it is refused."""
    items = value.get("user_preferences", [])
    if not isinstance(items, list):
        rejected.append(Rejected("user_preferences is not a list.", canonical_json(items)))
        return
    contacts = value.get("contacts")
    names = _names(contacts if isinstance(contacts, list) else [])
    for item in items:
        try:
            preferences.append(_preference(item, names))
        except MalformedWebhook as error:
            rejected.append(Rejected(str(error), canonical_json(item)))


def _preference(item: object, names: Mapping[str, str]) -> PreferenceChange:
    if not isinstance(item, dict):
        raise MalformedWebhook("An item of user_preferences is not an object.")
    wa_id = item.get("wa_id")
    if not isinstance(wa_id, str) or not wa_id.strip():
        raise MalformedWebhook("A user preference names no wa_id.")
    wa_id = wa_id.strip()
    category, choice = item.get("category"), item.get("value")
    if category != CATEGORY:
        raise MalformedWebhook(f"A user preference of an unknown category: {category!r:.40}.")
    if choice not in VALUES:
        raise MalformedWebhook(f"A user preference of an unknown value: {choice!r:.40}.")
    timestamp = _timestamp(item.get("timestamp"))
    reference = f"{wa_id}:{choice}:{timestamp}"
    try:
        validate_key(reference)
    except InvalidKey as error:
        raise MalformedWebhook(f"A user preference's wa_id is unusable: {error}") from error
    if len(wa_id) > MAX_WA_ID_CHARS:
        raise MalformedWebhook(f"A user preference's wa_id is over {MAX_WA_ID_CHARS} characters.")
    detail = item.get("detail")
    return PreferenceChange(
        wa_id=wa_id,
        profile_name=names.get(wa_id, ""),
        stops=VALUES[choice],
        occurred_at=datetime.fromtimestamp(timestamp, UTC),
        detail=_storable(detail) if isinstance(detail, str) else None,
        reference=reference,
        canonical=canonical_json(item),
    )


def _timestamp(value: object) -> int:
    """Meta's Unix time: a number here (messages spell it as a string; both are taken)."""
    if isinstance(value, str) and value.strip().isdecimal() and len(value.strip()) <= 12:
        value = int(value.strip())  # short: int() refuses strings over 4300 digits
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= LATEST_TIMESTAMP:
        raise MalformedWebhook("A user preference has no usable timestamp.")
    return value


def _names(contacts: list[Any]) -> dict[str, str]:
    """Each contact's profile name by wa_id."""
    names: dict[str, str] = {}
    for contact in contacts:
        if not isinstance(contact, dict) or not isinstance(contact.get("wa_id"), str):
            continue
        profile = contact.get("profile")
        name = profile.get("name") if isinstance(profile, dict) else None
        if isinstance(name, str):
            names[contact["wa_id"]] = _storable(name).strip()[:MAX_NAME_CHARS]
    return names


def _storable(text: str) -> str:
    """Without lone surrogates or NUL, which UTF-8 and PostgreSQL text cannot hold."""
    return text.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "")
