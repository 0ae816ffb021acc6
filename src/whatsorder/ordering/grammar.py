"""The message grammar: what a customer's text asks for.

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
import unicodedata
from dataclasses import dataclass

from whatsorder.ordering.model import RequestedLine, order_id_from_number, order_number

MAX_MESSAGE_CHARS = 2000
MAX_QUANTITY_DIGITS = 9
MAX_SKU_CHARS = 64  # products.sku; a longer code cannot be ours, and would bloat the reply

_UNSHOWABLE = {"Cc", "Cs", "Cn"}  # control characters, lone surrogates, non-characters: not XML
_ITEM_SEPARATORS = re.compile(r"[\n\r,;]+")
_SKU = rf"(?P<sku>[A-Za-z0-9][A-Za-z0-9_.\-/]{{0,{MAX_SKU_CHARS - 1}}})"
_QUANTITY = r"(?P<quantity>[+-]?\d+)"
# A space before the code is tried first, so "2 XL-SHIRT" is two XL-SHIRT, not two L-SHIRT.
_QUANTITY_FIRST = re.compile(rf"{_QUANTITY}(?:\s+|\s*[x×*]\s*(?=\S)){_SKU}", re.IGNORECASE)
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
        if not rest.strip():
            return ShowStatus(None)
        number = _order_number(rest)
        return ShowStatus(number) if number is not None else _not_an_order_number(rest)
    if word == "CANCEL":
        if not rest.strip():
            return Unreadable("Say which order to cancel, for example: CANCEL ORD-000123")
        number = _order_number(rest)
        return CancelOrder(number) if number is not None else _not_an_order_number(rest)
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
        written = match["quantity"]
        # Leading zeros are dropped before int(), which refuses strings over 4300 digits.
        digits = written.lstrip("+-").lstrip("0") or "0"
        if len(digits) > MAX_QUANTITY_DIGITS:
            return Unreadable(f"The quantity for {match['sku'].upper()} is far too large.")
        quantity = -int(digits) if written.startswith("-") else int(digits)
        lines.append(RequestedLine(match["sku"].upper(), quantity))
    return PlaceOrder(tuple(lines))


def _order_number(text: str) -> str | None:
    """``ord-7`` → ``ORD-000007``, the way we write it back; None for anything else."""
    order_id = order_id_from_number(text)
    return None if order_id is None else order_number(order_id)


def _not_an_order_number(text: str) -> Unreadable:
    return Unreadable(
        f"{_quote(text.strip())} is not an order number. Order numbers look like ORD-000123."
    )


def _quote(segment: str) -> str:
    """The customer's words, shortened, with characters XML cannot hold (in TwiML) replaced."""
    shown = segment if len(segment) <= 40 else segment[:37] + "..."
    safe = "".join("?" if unicodedata.category(char) in _UNSHOWABLE else char for char in shown)
    return f'"{safe}"'
