"""Idempotency keys: reading the ``Idempotency-Key`` header and checking that a key is usable.

draft-ietf-httpapi-idempotency-key-header makes the header an RFC 8941 structured-field String
(``"abc-123"``); older clients send a bare token (``abc-123``). Both are accepted and give the
same key. A key is 1-255 visible ASCII characters (docs/architecture.md §3); one that breaks a
rule raises `InvalidKey` naming the rule, which the web layer turns into a 400. Messages never
repeat the offending value: it may hold control characters meant for a log or a terminal.
"""

import re
from typing import Protocol

MAX_KEY_LENGTH = 255

_OWS = " \t"
_NOT_VISIBLE = re.compile(r"[^!-~]")
_NOT_VISIBLE_OR_SPACE = re.compile(r"[^ -~]")


class InvalidKey(ValueError):
    """An idempotency key broke a rule: ``rule`` names it, ``str(exc)`` explains it."""

    rule: str

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def parse_key_header(raw: str) -> str:
    """Return the key carried by an ``Idempotency-Key`` header value, or raise `InvalidKey`.

    A value that starts with a double quote must be a structured-field String; it is unescaped
    and may contain spaces. Anything else is taken as a bare token.
    """
    value = raw.strip(_OWS)
    if value.startswith('"'):
        return validate_key(_unquote_sf_string(value), allow_space=True)
    return validate_key(value)


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


def _unquote_sf_string(value: str) -> str:
    """Unescape a structured-field String (RFC 8941 §4.2.5); ``value`` starts with its quote."""
    chars: list[str] = []
    i = 1
    while i < len(value):
        char = value[i]
        if char == "\\":
            escaped = value[i + 1 : i + 2]
            if escaped not in ('"', "\\"):
                raise _malformed(
                    f"has a backslash at character {i + 1} that escapes neither '\"' nor '\\'"
                    if escaped
                    else "ends inside a backslash escape"
                )
            chars.append(escaped)
            i += 2
        elif char == '"':
            if i + 1 < len(value):
                raise _malformed(
                    f"has text after the closing quote at character {i + 2} "
                    "(parameters are not accepted)"
                )
            return "".join(chars)
        else:
            # Characters outside %x20-7E are left for validate_key, which names the right rule.
            chars.append(char)
            i += 1
    raise _malformed("opens a quoted string but never closes it")


def _malformed(problem: str) -> InvalidKey:
    return InvalidKey(
        "malformed-structured-field",
        f'Idempotency-Key header {problem}; send a bare token or an RFC 8941 string like "abc".',
    )


KEY_HEADERS = ("idempotency-key", "x-idempotency-key")


class HeaderLookup(Protocol):
    def get(self, name: str, /) -> str | None: ...


def key_from_headers(headers: HeaderLookup) -> str | None:
    """The client's key: ``Idempotency-Key`` first, then the older ``X-Idempotency-Key``.

    ``headers`` must look names up case-insensitively (as Starlette's and httpx's do).
    None when neither is present; ``InvalidKey`` when the one present is malformed.
    """
    for name in KEY_HEADERS:
        raw = headers.get(name)
        if raw is not None:
            return parse_key_header(raw)
    return None
