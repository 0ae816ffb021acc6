"""A webhook's answer in bytes: JSON as every route writes it, and the engine's result over HTTP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Response

from whatsorder_idempotency import Result, StoredResponse

JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Processed:
    """How the engine answered one request or message, and the order it created (if any)."""

    result: Result
    created_order: int | None


def json_stored(document: dict[str, Any], status: int = 200) -> StoredResponse:
    """A small JSON answer, in the shape the engine stores and replays.

    Compact and UTF-8, byte for byte what FastAPI's ``JSONResponse`` writes.
    """
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return StoredResponse(status, body, (("content-type", JSON_CONTENT_TYPE),))


def json_response(document: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer sent as it is, kept nowhere."""
    stored = json_stored(document, status)
    return Response(stored.body, status_code=stored.status, headers=dict(stored.headers))


def to_response(result: Result) -> Response:
    """The engine's answer over HTTP; a replay says so in ``Idempotent-Replayed``."""
    response = result.response
    headers = dict(response.headers)
    if result.replayed:
        headers["idempotent-replayed"] = "true"
    return Response(response.body, status_code=response.status, headers=headers)
