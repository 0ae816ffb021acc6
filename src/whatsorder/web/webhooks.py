"""What every signed-webhook route shares: the cheap guards, the refusals, the JSON answer.

DESIGN.md §2 in order: body limit, HTTPS, per-IP limit (`admit`), then the route's own secret
and signature (refused with `not_configured`, `signature_missing`, `signature_invalid`), then
the idempotency engine, whose `Result` becomes the HTTP response in `to_response`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from pydantic import SecretStr

from whatsorder import observability
from whatsorder.idempotency import Result, StoredResponse
from whatsorder.settings import secret
from whatsorder.web.guards import client_ip, read_body, require_https
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime

JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request past the cheap guards: its raw body, unparsed, and who sent it."""

    body: bytes
    source_ip: str


async def admit(request: Request, runtime: Runtime, max_body_bytes: int | None = None) -> Admitted:
    """Steps 1–3 of DESIGN.md §2: 413 (or 408, too slow), 403 (not HTTPS), 429 — before any
    crypto."""
    settings = runtime.settings
    body = await read_body(
        request, max_body_bytes or settings.max_body_bytes, settings.body_read_timeout_seconds
    )
    require_https(request, settings)
    address = client_ip(request, settings)
    await check_ip(runtime, address)
    return Admitted(body, address)


async def check_ip(runtime: Runtime, address: str) -> None:
    """The per-IP limit (429), counted in the rate-limit metric."""
    try:
        await runtime.limits.check_ip(address)
    except Problem as refused:
        if refused.status == 429:  # not the 503 of unreachable counters
            observability.record_rate_limited("ip")
        raise


def not_configured(provider: str, variable: str) -> Problem:
    return Problem(
        503,
        "provider-not-configured",
        f"{provider} not configured",
        f"{variable} is not set; unsigned traffic is never accepted.",
    )


def required_secret(value: SecretStr | None, provider: str, variable: str) -> str:
    """The provider's secret, or 503: without it, unsigned traffic is never accepted."""
    plain = secret(value)
    if plain is None:
        raise not_configured(provider, variable)
    return plain


def signature_of(request: Request, source: str, header: str) -> str:
    """The request's signature header, or 401 (counted as a signature failure)."""
    value = request.headers.get(header)
    if not value:
        raise signature_missing(source, header)
    return value


def signature_missing(provider: str, header: str) -> Problem:
    """401 for an unsigned request, counted in the signature-failure metric."""
    observability.record_signature_failure(provider, "missing")
    return Problem(401, "signature-missing", "Signature missing", f"{header} header is missing.")


def signature_invalid(provider: str, header: str, detail: str | None = None) -> Problem:
    """403 for a signature that does not match, counted in the signature-failure metric."""
    observability.record_signature_failure(provider, "invalid")
    return Problem(
        403,
        "signature-invalid",
        "Signature invalid",
        detail or f"{header} does not match this request.",
    )


def malformed_body() -> Problem:
    return Problem(400, "malformed-body", "Malformed body", "The body is not UTF-8.")


def json_stored(document: dict[str, Any], status: int = 200) -> StoredResponse:
    """A small JSON answer, in the shape the engine stores and replays."""
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return StoredResponse(status, body, (("content-type", JSON_CONTENT_TYPE),))


def to_response(result: Result) -> Response:
    """The engine's answer over HTTP; a replay says so in ``Idempotent-Replayed``."""
    response = result.response
    headers = dict(response.headers)
    if result.replayed:
        headers["idempotent-replayed"] = "true"
    return Response(response.body, status_code=response.status, headers=headers)
