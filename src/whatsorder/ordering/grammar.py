"""The message grammar (DESIGN.md §4): what a customer's text asks for.

```
MENU | CATALOG                  → ShowCatalogue
ORDER 2 x ATTA-5KG, 1 TOOR-1KG  → PlaceOrder (the word ORDER is optional)
STATUS [ORD-000123]             → ShowStatus
CANCEL ORD-000123               → CancelOrder
HELP | anything else            → ShowHelp
```
Case-insensitive; items are separated by lines, commas or semicolons; the ``x`` is optional.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from whatsorder.ordering.model import RequestedLine

MAX_MESSAGE_CHARS = 2000
MAX_QUANTITY_DIGITS = 9

_ITEM_SEPARATORS = re.compile(r"[\n\r,;]+")
_SKU = r"(?P<sku>[A-Za-z0-9][A-Za-z0-9_.\-/]*)"
_QUANTITY = r"(?P<quantity>[+-]?\d+)"
_QUANTITY_FIRST = re.compile(rf"{_QUANTITY}\s*(?:[x×*]\s*(?=\S)|\s+){_SKU}", re.IGNORECASE)
_SKU_FIRST = re.compile(rf"{_SKU}\s*[x×*]\s*{_QUANTITY}", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ShowCatalogue:
    pass


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    lines: tuple[RequestedLine, ...]


@dataclass(frozen=True, slots=True)
class ShowStatus:
    order_number: str | None


@dataclass(frozen=True, slots=True)
class CancelOrder:
    order_number: str


@dataclass(frozen=True, slots=True)
class ShowHelp:
    pass


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message we understood the intent of but could not read; ``reason`` is for the customer."""

    reason: str


Command = ShowCatalogue | PlaceOrder | ShowStatus | CancelOrder | ShowHelp | Unreadable


def parse_message(text: str) -> Command:
    """What the message asks for. Never raises: unreadable input is a command too."""
    stripped = text.strip()
    if not stripped:
        return Unreadable("We can only read text messages. Send HELP to see how to order.")
    if len(stripped) > MAX_MESSAGE_CHARS:
        return Unreadable(
            f"Your message is too long ({len(stripped)} characters; the limit is "
            f"{MAX_MESSAGE_CHARS}). Please send a shorter order."
        )
    parts = stripped.split(maxsplit=1)
    word = parts[0].upper()
    rest = parts[1] if len(parts) > 1 else ""
    if word in {"MENU", "CATALOG", "CATALOGUE"}:
        return ShowCatalogue()
    if word == "HELP":
        return ShowHelp()
    if word == "STATUS":
        number = rest.strip()
        return ShowStatus(number.upper() if number else None)
    if word == "CANCEL":
        number = rest.strip()
        if not number:
            return Unreadable("Say which order to cancel, for example: CANCEL ORD-000123")
        return CancelOrder(number.upper())
    if word == "ORDER":
        return _parse_items(rest, explicit=True)
    return _parse_items(stripped, explicit=False)


def _parse_items(text: str, *, explicit: bool) -> Command:
    segments = [segment.strip() for segment in _ITEM_SEPARATORS.split(text) if segment.strip()]
    if not segments:
        return Unreadable("Your order has no items. Write them like: ORDER 2 x ATTA-5KG")
    lines: list[RequestedLine] = []
    for index, segment in enumerate(segments):
        match = _QUANTITY_FIRST.fullmatch(segment) or _SKU_FIRST.fullmatch(segment)
        if match is None:
            if not explicit and index == 0:
                return ShowHelp()  # not an order at all
            return Unreadable(
                f"I could not read {_quote(segment)}. Write each item as quantity and code, "
                "for example: 2 x ATTA-5KG"
            )
        digits = match["quantity"].lstrip("+-")
        if len(digits.lstrip("0")) > MAX_QUANTITY_DIGITS:
            return Unreadable(f"The quantity for {match['sku'].upper()} is far too large.")
        lines.append(RequestedLine(match["sku"].upper(), int(match["quantity"])))
    return PlaceOrder(tuple(lines))


def _quote(segment: str) -> str:
    shown = segment if len(segment) <= 40 else segment[:37] + "..."
    return f'"{shown}"'
