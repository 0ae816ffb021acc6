"""The message grammar: what a customer's text asks for.

```
MENU | CATALOG                  → ShowCatalogue
ORDER 2 x ATTA-5KG, 1 TOOR-1KG  → PlaceOrder (the word ORDER is optional)
STATUS [ORD-000123]             → ShowStatus
CANCEL ORD-000123               → CancelOrder
PAY ORD-000123                  → RequestPayment (a payment link for what is left to pay)
LANGUAGE HI | भाषा हिंदी          → ChooseLanguage (EN, English, अंग्रेज़ी…; anything else: the choices)
STOP | START (the whole message) → ChangeConsent (see whatsorder.ordering.customer)
HELP | anything else            → ShowHelp
```
Case-insensitive; items are separated by lines, commas or semicolons; the ``x`` is optional.
What the customer is told about an unreadable message is a `Phrase`, said in their language.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from whatsorder.ordering.customer import ConsentChange, consent_word
from whatsorder.ordering.i18n import N_, Phrase, language_named
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
class RequestPayment:
    order_number: str


@dataclass(frozen=True, slots=True)
class ShowHelp:
    pass


@dataclass(frozen=True, slots=True)
class ChooseLanguage:
    """``LANGUAGE HI``: ``language`` is ours, or None when ``asked`` names none we have."""

    language: str | None
    asked: str


@dataclass(frozen=True, slots=True)
class ChangeConsent:
    """``STOP`` or ``START``: proactive messages off or on again."""

    change: ConsentChange


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message we understood the intent of but could not read; ``why`` is for the customer."""

    why: Phrase

    @property
    def reason(self) -> str:
        """Why, in English."""
        return str(self.why)


Command = (
    ShowCatalogue
    | PlaceOrder
    | ShowStatus
    | CancelOrder
    | RequestPayment
    | ChooseLanguage
    | ChangeConsent
    | ShowHelp
    | Unreadable
)
LANGUAGE_WORDS = frozenset({"LANGUAGE", "भाषा"})


def parse_message(text: str) -> Command:
    """What the message asks for. Never raises: unreadable input is a command too."""
    stripped = text.strip()
    if not stripped:
        return _unreadable(N_("We can only read text messages. Send HELP to see how to order."))
    if len(stripped) > MAX_MESSAGE_CHARS:
        return _unreadable(
            N_(
                "Your message is too long (%(length)d characters; the limit is %(limit)d). "
                "Please send a shorter order."
            ),
            length=len(stripped),
            limit=MAX_MESSAGE_CHARS,
        )
    change = consent_word(stripped)
    if change is not None:
        return ChangeConsent(change)
    parts = stripped.split(maxsplit=1)
    word = parts[0].upper()
    rest = parts[1] if len(parts) > 1 else ""
    if word.rstrip(":") in LANGUAGE_WORDS:
        asked = rest.strip().removeprefix(":").strip()
        return ChooseLanguage(language_named(asked), _shown(asked))
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
            return _unreadable(N_("Say which order to cancel, for example: CANCEL ORD-000123"))
        number = _order_number(rest)
        return CancelOrder(number) if number is not None else _not_an_order_number(rest)
    if word == "PAY":
        if not rest.strip():
            return _unreadable(N_("Say which order to pay, for example: PAY ORD-000123"))
        number = _order_number(rest)
        return RequestPayment(number) if number is not None else _not_an_order_number(rest)
    if word == "ORDER":
        return _parse_items(rest, explicit=True)
    return _parse_items(stripped, explicit=False)


def _parse_items(text: str, *, explicit: bool) -> Command:
    segments = [segment.strip() for segment in _ITEM_SEPARATORS.split(text) if segment.strip()]
    if not segments:
        return _unreadable(N_("Your order has no items. Write them like: ORDER 2 x ATTA-5KG"))
    lines: list[RequestedLine] = []
    for index, segment in enumerate(segments):
        match = _QUANTITY_FIRST.fullmatch(segment) or _SKU_FIRST.fullmatch(segment)
        if match is None:
            if not explicit and index == 0:
                return ShowHelp()  # not an order at all
            return _unreadable(
                N_(
                    "I could not read %(words)s. Write each item as quantity and code, "
                    "for example: 2 x ATTA-5KG"
                ),
                words=_quote(segment),
            )
        written = match["quantity"]
        # Leading zeros are dropped before int(), which refuses strings over 4300 digits.
        digits = written.lstrip("+-").lstrip("0") or "0"
        if len(digits) > MAX_QUANTITY_DIGITS:
            return _unreadable(
                N_("The quantity for %(sku)s is far too large."), sku=match["sku"].upper()
            )
        quantity = -int(digits) if written.startswith("-") else int(digits)
        lines.append(RequestedLine(match["sku"].upper(), quantity))
    return PlaceOrder(tuple(lines))


def _order_number(text: str) -> str | None:
    """``ord-7`` → ``ORD-000007``, the way we write it back; None for anything else."""
    order_id = order_id_from_number(text)
    return None if order_id is None else order_number(order_id)


def _not_an_order_number(text: str) -> Unreadable:
    return _unreadable(
        N_("%(words)s is not an order number. Order numbers look like ORD-000123."),
        words=_quote(text.strip()),
    )


def _unreadable(message: str, **values: str | int) -> Unreadable:
    return Unreadable(Phrase.of(message, **values))


def _quote(segment: str) -> str:
    return f'"{_shown(segment)}"'


def _shown(segment: str) -> str:
    """The customer's words, shortened, with characters XML cannot hold (in TwiML) replaced."""
    shown = segment if len(segment) <= 40 else segment[:37] + "..."
    return "".join("?" if unicodedata.category(char) in _UNSHOWABLE else char for char in shown)
