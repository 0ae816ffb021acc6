"""Reading payment providers' JSON: ids, amounts in minor units, currencies, our order number.

Values are checked before they reach the database, so a signed but odd payload is a 400 naming
the field rather than a database error (a 500 the provider would retry for days).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from whatsorder.providers.malformed import MalformedWebhook

MAX_AMOUNT = 10**15  # minor units; far above any order, far below BIGINT
_ID = re.compile(r"[!-~]{1,255}")  # provider ids: visible ASCII, as the key columns hold them
_CURRENCY = re.compile(r"[A-Za-z]{3}")


class MalformedPayment(MalformedWebhook):
    """A signed payment event that lacks what every event of its type carries."""


def parse_object(text: str) -> Mapping[str, Any]:
    """The JSON object of a webhook body."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise MalformedPayment("The body is not JSON.") from error
    except RecursionError as error:  # deeper than Python's JSON parser goes
        raise MalformedPayment("The body is nested too deeply.") from error
    if not isinstance(document, dict):
        raise MalformedPayment("The body is not a JSON object.")
    return document


def mapping(container: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = container.get(name)
    if not isinstance(value, dict):
        raise MalformedPayment(f"The event has no {name} object.")
    return value


def optional_mapping(container: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """An object that may be absent, or (Razorpay's empty ``notes``) an empty list."""
    value = container.get(name)
    return value if isinstance(value, dict) else {}


def identifier(container: Mapping[str, Any], name: str) -> str:
    value = container.get(name)
    if isinstance(value, dict):  # an expanded object (Stripe): its id
        value = value.get("id")
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise MalformedPayment(f"{name} is missing or not an id (1-255 visible ASCII).")
    return value


def amount(container: Mapping[str, Any], name: str) -> int:
    value = container.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        raise MalformedPayment(f"{name} is missing or not a whole amount in minor units.")
    return value


def currency(container: Mapping[str, Any], name: str = "currency") -> str:
    value = container.get(name)
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise MalformedPayment(f"{name} is missing or not a three-letter currency code.")
    return value.upper()


def order_reference(*notes: Mapping[str, Any]) -> str | None:
    """Our order number (``order_id``) from the first metadata or notes that carry one."""
    for note in notes:
        value = note.get("order_id")
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None
