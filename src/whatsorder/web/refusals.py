"""What the webhook pipeline refuses, as the problems it answers (docs/architecture.md §2):
the provider not configured (503), the signature missing (401) or wrong (403), a body or a
webhook that cannot be read (400). Signature refusals are counted as they are made."""

from __future__ import annotations

from fastapi import Request
from pydantic import SecretStr

from whatsorder import observability
from whatsorder.providers.malformed import MalformedWebhook
from whatsorder.settings import secret
from whatsorder.web.problems import Problem


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


def malformed_webhook(error: MalformedWebhook) -> Problem:
    """400 for a signed request its provider's parser refused, naming what is wrong."""
    return Problem(400, "malformed-webhook", "Malformed webhook", str(error))
