"""What never reaches a log line whole: phone numbers (masked) and query-string values.

Keys appear only hashed (the engine hashes them); ids and hashes are written as they are.
"""

from __future__ import annotations

import logging
import re
from typing import Final

# International numbers, with or without "+" (WhatsApp ids have none): 8 to 15 digits.
_PHONE: Final = re.compile(r"(?<![\w+])\+?\d{8,15}(?!\d)")

# A query string may carry a credential (Meta's handshake sends hub.verify_token in it):
# access log lines keep the parameters' names, never their values.
_QUERY_VALUE: Final = re.compile(r"=[^&]*")


def mask_phone(text: str) -> str:
    """Every phone-like number in ``text`` with all but its last 4 digits starred."""
    return _PHONE.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    number = match.group()
    plus = "+" if number.startswith("+") else ""
    digits = number.removeprefix("+")
    return plus + "*" * (len(digits) - 4) + digits[-4:]


AccessArguments = tuple[object, object, object, object, object]


def access_arguments(record: logging.LogRecord) -> AccessArguments | None:
    """An access log line's (client, method, path, version, status); ``None`` for other lines."""
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, version, status = record.args
        return client, method, path, version, status
    return None


def redact_access(record: logging.LogRecord) -> None:
    """Blank the query values of an access log line's path, for every handler alike."""
    arguments = access_arguments(record)
    if arguments is None:
        return
    client, method, path, version, status = arguments
    if isinstance(path, str) and "?" in path:
        base, _, query = path.partition("?")
        record.args = (client, method, f"{base}?{_QUERY_VALUE.sub('=*', query)}", version, status)
