"""Personal data as we keep it: phone numbers masked, wherever they are written.

One rule for logs, stored request bodies and dead letters alike: a run of 8 or more digits
(with or without "+", WhatsApp ids have none) that is not part of a word is a phone number —
or a business-scoped user id, just as personal — and keeps only its last four digits.
"""

from __future__ import annotations

import re
from typing import Final

# E.164 numbers have 8 to 15 digits; longer runs (Meta's user ids) are masked too.
_PHONE: Final = re.compile(r"(?<![\w+])\+?\d{8,}(?!\d)")


def mask_phone(text: str) -> str:
    """Every phone-like number in ``text`` with all but its last 4 digits starred."""
    return _PHONE.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    number = match.group()
    plus = "+" if number.startswith("+") else ""
    digits = number.removeprefix("+")
    return plus + "*" * (len(digits) - 4) + digits[-4:]


def redacted(body: bytes | str, limit: int = 64 * 1024) -> str:
    """Text fit to keep: phone numbers masked, NUL replaced, at most ``limit`` characters.

    Signed deliveries hold no secrets of ours; numbers are personal data.
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    if len(text) > limit:
        text = text[:limit] + f"… [{len(text) - limit} characters cut]"
    return mask_phone(text)
