"""What never reaches a log line whole: phone numbers (masked by the one rule of
whatsorder.privacy) and query-string values.

Keys appear only hashed (the engine hashes them); ids and hashes are written as they are.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from whatsorder.privacy import mask_phone as mask_phone

# A query string may carry a credential (Meta's handshake sends hub.verify_token in it):
# access log lines keep the parameters' names, never their values.
_QUERY_VALUE: Final = re.compile(r"=[^&]*")


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
