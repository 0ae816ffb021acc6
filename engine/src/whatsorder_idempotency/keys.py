"""Idempotency keys: reading the ``Idempotency-Key`` header and checking that a key is usable.

draft-ietf-httpapi-idempotency-key-header makes the header an RFC 9651 structured-field Item:
a String (``"abc 123"``) or, as older clients send, a Token (``abc-123``); both give the key
they spell. The header is parsed by ``http-sf``. A key is 1-255 visible ASCII characters
(docs/architecture.md §3); a header that breaks a rule raises `InvalidKey` naming the rule,
which the web layer turns into a 400. Messages never repeat the offending value: it may hold
control characters meant for a log or a terminal.
"""

import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol, cast, runtime_checkable

import http_sf
from http_sf.types import BareItemType, DisplayString, ParamsType, Token

MAX_KEY_LENGTH = 255
KEY_HEADERS = ("Idempotency-Key", "X-Idempotency-Key")  # the draft's name, then the older one

_OWS = " \t"
_NOT_VISIBLE = re.compile(r"[^!-~]")
_NOT_VISIBLE_OR_SPACE = re.compile(r"[^ -~]")
_EXAMPLE = 'send a string like "abc-123" or a token like abc-123'
# Keys as clients nearly always send them (UUIDs, ULIDs, "order-123"): a letter or digit, then
# letters, digits and "_.:/-". Each such value is its own key by every rule below (a Token, a
# number kept as written, or a legacy bare key with no character that gives it structure), so
# it is taken as it is without parsing: the parse was a tenth of a replay's time (bench/).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,254}")


class InvalidKey(ValueError):
    """An idempotency key broke a rule: ``rule`` names it, ``str(exc)`` explains it."""

    rule: str

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def parse_key_header(raw: str, *, header: str = "Idempotency-Key") -> str:
    """Return the key carried by one field line of the header, or raise `InvalidKey`.

    An sf-String gives its unescaped text (spaces allowed), an sf-Token its own text. A legacy
    bare key that is no Token (see `_legacy_bare_key`) is taken literally, as it always was.
    ``header`` names the header in messages.
    """
    value = raw.strip(_OWS)
    if _PLAIN_KEY.fullmatch(value):
        return value
    bad = _NOT_VISIBLE_OR_SPACE.search(value)
    if bad is not None:
        raise InvalidKey(
            "not-visible-ascii",
            f"{header} header has U+{ord(bad.group()):04X} at character {bad.start() + 1}; "
            "only visible ASCII is allowed, and spaces only inside a quoted string.",
        )
    if not value:
        return validate_key(value)
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="item")
    except http_sf.StructuredFieldError as error:
        return _legacy_bare_key(value, header, error.position)
    item, parameters = cast(tuple[BareItemType, ParamsType], parsed)
    if parameters:
        raise _parameters(header)
    if isinstance(item, str):  # an sf-String
        return validate_key(item, allow_space=True)
    if isinstance(item, Token):
        return validate_key(str(item))
    if isinstance(item, int | Decimal | float) and not isinstance(item, bool):
        return validate_key(value)  # the key's own text: 007 stays 007
    raise InvalidKey(
        "wrong-item-type",
        f"{header} header is {_item_type(item)}, not a String or a Token; {_EXAMPLE}.",
    )


def _legacy_bare_key(value: str, header: str, position: int | None) -> str:
    """A value that is no sf-Item: the bare key older clients send, taken literally, if it can be.

    Clients send unquoted UUIDs (``8e03978e-…`` is an sf-Integer followed by stray characters,
    so no Item) and base64 keys ending in ``=``; the IETF draft's own examples are UUIDs. No
    structured-field library is this lenient, so it is done here: such a value stays its own
    key, as before, unless it holds a character that gives it structure. A quote, a comma, a
    parenthesis or a semicolon would let two different headers share a key or lose part of one.
    """
    if _is_list(value):
        raise _list(header)
    if '"' in value:
        where = "" if position is None else f" (the parser stopped at character {position + 1})"
        raise InvalidKey(
            "malformed-structured-field",
            f"{header} header is not a valid RFC 9651 string{where}; {_EXAMPLE}.",
        )
    if any(char in value for char in ",()"):
        raise _list(header)
    if ";" in value:
        raise _parameters(header)
    return validate_key(value)


def _is_list(value: str) -> bool:
    """Whether ``value`` is an sf-List of several members, or of one Inner List."""
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="list")
    except http_sf.StructuredFieldError:
        return False
    members = cast(list[tuple[object, ParamsType]], parsed)
    return len(members) > 1 or any(isinstance(member, list) for member, _ in members)


def validate_key(key: str, *, allow_space: bool = False) -> str:
    """Return ``key`` if it is 1-255 visible ASCII characters, else raise `InvalidKey`.

    ``allow_space`` admits spaces too, as a structured-field String may hold them.
    """
    if not key.strip(" "):
        raise InvalidKey("empty", "Idempotency key is empty; it needs a visible character.")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(
            "too-long",
            f"Idempotency key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}.",
        )
    bad = (_NOT_VISIBLE_OR_SPACE if allow_space else _NOT_VISIBLE).search(key)
    if bad is not None:
        allowed = "visible ASCII or spaces" if allow_space else "visible ASCII (no spaces)"
        raise InvalidKey(
            "not-visible-ascii",
            f"Idempotency key has U+{ord(bad.group()):04X} at character {bad.start() + 1}; "
            f"only {allowed} is allowed.",
        )
    return key


def _item_type(item: BareItemType) -> str:
    if isinstance(item, bool):
        return "a Boolean"
    if isinstance(item, bytes):
        return "a Byte Sequence"
    if isinstance(item, datetime):
        return "a Date"
    if isinstance(item, DisplayString):
        return "a Display String"
    return "a value of another type"


def _list(header: str) -> InvalidKey:
    return InvalidKey(
        "not-an-item",
        f"{header} header holds a list of values, not one key; send exactly one key, "
        'like "abc-123".',
    )


def _parameters(header: str) -> InvalidKey:
    return InvalidKey(
        "parameters-not-allowed",
        f"{header} header has parameters after the key (';'); they are neither part of the key "
        'nor ignored, so send the key alone, like "abc-123".',
    )


@runtime_checkable
class HeaderValues(Protocol):
    """Headers that give every value of a name, case-insensitively (Starlette's ``Headers``)."""

    def getlist(self, key: str, /) -> Sequence[str]: ...


class HeaderLookup(Protocol):
    """Headers that give one value of a name, case-insensitively: repeats cannot be seen."""

    def get(self, key: str, /) -> str | None: ...


def key_from_headers(headers: HeaderValues | HeaderLookup) -> str | None:
    """The client's key, from ``Idempotency-Key`` and the older ``X-Idempotency-Key``.

    Every field line of both headers must name the same key: a header repeated with another
    key is ``repeated-header``, the two headers naming different keys ``conflicting-headers``.
    None when neither is present; ``InvalidKey`` when a value breaks a rule.
    """
    found: dict[str, str] = {}
    for header in KEY_HEADERS:
        keys = {parse_key_header(raw, header=header) for raw in _values(headers, header)}
        if len(keys) > 1:
            raise InvalidKey(
                "repeated-header",
                f"{header} header was sent more than once with different keys; send it once.",
            )
        if keys:
            found[header] = keys.pop()
    if len(set(found.values())) > 1:
        raise InvalidKey(
            "conflicting-headers",
            f"{' and '.join(KEY_HEADERS)} name different keys; send one of them, "
            "or the same key in both.",
        )
    return next(iter(found.values()), None)


def _values(headers: HeaderValues | HeaderLookup, header: str) -> Sequence[str]:
    name = header.lower()
    # Not isinstance(headers, HeaderValues): a runtime Protocol check walks its members, a few
    # per cent of a replay's time (bench/).
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        return cast(Sequence[str], getlist(name))
    value = cast(HeaderLookup, headers).get(name)
    return [] if value is None else [value]
