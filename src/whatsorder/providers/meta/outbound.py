"""Meta's sending side: the Cloud API's ``/{phone_number_id}/messages``, text or template.

Meta documents no send-side idempotency; the row's outbox key still goes as
``Idempotency-Key``, so a receiver that honours it delivers a resent row once.
"""

from __future__ import annotations

from typing import Any

import httpx

from whatsorder.outbound.forms import MetaTemplate, Outbound, Refusal, SendFailed, Text
from whatsorder.privacy import redacted
from whatsorder.providers.meta.delivery import SOURCE
from whatsorder.providers.meta.send import send_payload

# Answers worth retrying as they are; any other 4xx will not change by sending it again.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
# Error codes the outbox holds the row for instead of failing it.
REFUSALS = {
    131050: Refusal.OPTED_OUT,  # the user stopped marketing messages from the business
    131047: Refusal.WINDOW_CLOSED,  # re-engagement: more than 24 hours since their message
}


class MetaChannel:
    """Sends through the Graph API; without a token or phone number id it cannot send."""

    provider = SOURCE

    def __init__(
        self,
        graph_url: str,
        access_token: str | None,
        phone_number_id: str | None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._url = f"{graph_url.rstrip('/')}/{phone_number_id}/messages"
        self._access_token = access_token if phone_number_id else None
        self._client = client
        self._owns_client = client is None
        self._timeout = timeout

    @property
    def missing_configuration(self) -> str | None:
        if self._access_token is None:
            return "no Meta access token or phone number id is configured"
        return None

    async def send(self, outbound: Outbound) -> str | None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        try:
            response = await self._client.post(
                self._url,
                json=payload(outbound),
                headers={
                    "Authorization": f"Bearer {self._access_token}",
                    "Idempotency-Key": outbound.key,
                },
            )
        except httpx.HTTPError as error:  # timeouts, refused connections, broken responses
            raise SendFailed(f"{type(error).__name__}: {error}", permanent=False) from error
        status = response.status_code
        if status >= 400:
            code, reason = describe(response)
            retryable = status >= 500 or status in RETRYABLE_STATUSES
            refusal = REFUSALS.get(code) if code is not None else None
            raise SendFailed(reason, permanent=not retryable, refusal=refusal)
        return message_id(response)

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None


def payload(outbound: Outbound) -> dict[str, Any]:
    """The Cloud API's send-message body for a text or a template."""
    form = outbound.form
    if isinstance(form, Text):
        return send_payload(outbound.recipient, form.body)
    if not isinstance(form, MetaTemplate):
        raise TypeError(f"Meta cannot send a {type(form).__name__}")
    body = send_payload(outbound.recipient, "")
    del body["text"]
    template: dict[str, Any] = {"name": form.name, "language": {"code": form.language}}
    if form.parameters:
        parameters = [{"type": "text", "text": value} for value in form.parameters]
        template["components"] = [{"type": "body", "parameters": parameters}]
    return {**body, "type": "template", "template": template}


def describe(response: httpx.Response) -> tuple[int | None, str]:
    """Meta's error code and ``HTTP 400 (131047: Re-engagement message)``, as far as given."""
    reason = f"HTTP {response.status_code}"
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return None, reason
    if not isinstance(error, dict) or not (error.get("code") or error.get("message")):
        return None, reason
    title = error.get("error_user_title") or error.get("title") or error.get("message")
    code = error.get("code")
    reason += f" ({code}: {redacted(str(title), 200)})"
    number = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    return number, reason


def message_id(response: httpx.Response) -> str | None:
    """The id Meta gave the sent message (``messages[0].id``), if it said."""
    try:
        messages = response.json().get("messages")
    except (ValueError, AttributeError):
        return None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        found = messages[0].get("id")
        return found if isinstance(found, str) else None
    return None
