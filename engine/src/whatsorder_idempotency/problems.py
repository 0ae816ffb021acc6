"""RFC 9457 problem details for the engine's outcomes."""

from __future__ import annotations

import json

from whatsorder_idempotency.errors import (
    FingerprintMismatch,
    IdempotencyError,
    RequestInFlight,
    StoreBusy,
    StoreUnavailable,
)
from whatsorder_idempotency.keys import InvalidKey

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:problem-type:idempotency:"


def problem_body(kind: str, title: str, status: int, detail: str, **extra: object) -> bytes:
    """A problem+json document; ``kind`` becomes the stable ``type`` URI."""
    document: dict[str, object] = {
        "type": TYPE_PREFIX + kind if ":" not in kind else kind,
        "title": title,
        "status": status,
        "detail": detail,
    }
    document.update(extra)
    return json.dumps(document, separators=(",", ":")).encode()


def problem_for(error: IdempotencyError | InvalidKey) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers for one of the engine's outcomes."""
    headers = {"content-type": PROBLEM_CONTENT_TYPE}
    if isinstance(error, InvalidKey):
        body = problem_body(
            "invalid-key", "Invalid idempotency key", 400, str(error), rule=error.rule
        )
        return 400, body, headers
    if isinstance(error, FingerprintMismatch):
        title = "Idempotency key reused with another request"
        return 422, problem_body("key-reused", title, 422, str(error)), headers
    if isinstance(error, RequestInFlight):
        headers["retry-after"] = str(error.retry_after)
        title = "Request with this key is still in progress"
        return 409, problem_body("in-flight", title, 409, str(error)), headers
    if isinstance(error, StoreBusy):
        headers["retry-after"] = str(error.retry_after)
        title = "Idempotency store busy"
        return 503, problem_body("store-busy", title, 503, str(error)), headers
    if isinstance(error, StoreUnavailable):
        headers["retry-after"] = "5"
        title = "Idempotency store unavailable"
        return 503, problem_body("store-unavailable", title, 503, str(error)), headers
    title = "Idempotency error"
    return 500, problem_body("internal", title, 500, "The request could not be processed."), headers
