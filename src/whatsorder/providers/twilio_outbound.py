"""Twilio's sending side: the Messages REST API through the twilio SDK's asyncio client.

Text goes as ``Body``; a template as ``ContentSid`` and ``ContentVariables``. Each message
names our status route as its ``StatusCallback``, so Twilio's delivery states (queued, sent,
delivered, read, failed, undelivered) come back signed and are recorded against the SID this
returns. Twilio documents no send-side idempotency. Its answers: a 4xx is permanent except
429 (and 408); a 5xx, a timeout or a broken connection is retried.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from whatsorder.outbound.forms import Outbound, Refusal, SendFailed, Text, TwilioTemplate
from whatsorder.privacy import redacted
from whatsorder.providers.twilio import SOURCE

DEFAULT_API_URL = "https://api.twilio.com"
RETRYABLE_STATUSES = frozenset({408, 429})
REFUSALS = {
    21610: Refusal.OPTED_OUT,  # the recipient replied STOP to this sender
    63016: Refusal.WINDOW_CLOSED,  # free-form message outside the 24-hour window
}

# The SDK logs every request and answer at INFO (URL, headers): only its warnings are worth
# a line of ours; the outbox logs what it did with each message.
_SDK_LOG = logging.getLogger("whatsorder.outbox.twilio_sdk")
_SDK_LOG.setLevel(logging.WARNING)


class TwilioChannel:
    """Sends through Twilio; without an account SID, auth token and sender it cannot send."""

    provider = SOURCE

    def __init__(
        self,
        account_sid: str | None,
        auth_token: str | None,
        whatsapp_from: str | None,
        status_callback: str | None,
        api_url: str = DEFAULT_API_URL,
    ) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._from = whatsapp_address(whatsapp_from) if whatsapp_from else None
        self._status_callback = status_callback
        self._api_url = api_url.rstrip("/")
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None

    @property
    def missing_configuration(self) -> str | None:
        missing = [
            name
            for name, value in (
                ("WHATSORDER_TWILIO_ACCOUNT_SID", self._account_sid),
                ("WHATSORDER_TWILIO_AUTH_TOKEN", self._auth_token),
                ("WHATSORDER_TWILIO_WHATSAPP_FROM", self._from),
            )
            if not value
        ]
        return f"Twilio sending is not configured: set {' and '.join(missing)}" if missing else None

    async def send(self, outbound: Outbound) -> str | None:
        fields: dict[str, Any] = {"to": whatsapp_address(outbound.recipient), "from_": self._from}
        if self._status_callback:
            fields["status_callback"] = self._status_callback
        form = outbound.form
        if isinstance(form, Text):
            fields["body"] = form.body
        elif isinstance(form, TwilioTemplate):
            fields["content_sid"] = form.content_sid
            fields["content_variables"] = json.dumps(dict(form.variables), ensure_ascii=False)
        else:
            raise TypeError(f"Twilio cannot send a {type(form).__name__}")
        try:
            message = await self._messages().create_async(**fields)
        except TwilioRestException as error:
            raise _failure(error.status, error.code, error.msg) from error
        except TwilioServiceException as error:
            raise _failure(error.status, error.code, error.detail or error.title) from error
        except (aiohttp.ClientError, TwilioException, ValueError) as error:
            # Refused or broken connections, and an answer that is not Twilio's JSON.
            raise SendFailed(f"{type(error).__name__}: {error}", permanent=False) from error
        sid = getattr(message, "sid", None)
        return sid if isinstance(sid, str) else None

    def _messages(self) -> Any:
        if self._client is None:
            # Made inside the running loop: the SDK's aiohttp session belongs to it. The SDK's
            # own retries stay off: they would resend what Twilio may have accepted, outside
            # the outbox's lease and backoff.
            self._http = AsyncTwilioHttpClient(logger=_SDK_LOG, max_retries=None)
            self._client = Client(self._account_sid, self._auth_token, http_client=self._http)
            self._client.api.base_url = self._api_url
        return self._client.messages

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
            self._client = None


def whatsapp_address(number: str) -> str:
    """``whatsapp:+919876543210`` for a number with or without the channel prefix."""
    return number if number.startswith("whatsapp:") else f"whatsapp:{number}"


def _failure(status: int, code: object, message: object) -> SendFailed:
    """``HTTP 400 (21211: Invalid 'To' Phone Number)``, retryable or not, held or not."""
    # Without Twilio's JSON (a proxy's 502 page) the SDK gives the HTTP status as the code.
    number = code if isinstance(code, int) and code != status else None
    text = str(message or "").removeprefix("Unable to create record: ")
    reason = f"HTTP {status} ({number}: {redacted(text, 200)})" if number else f"HTTP {status}"
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    refusal = REFUSALS.get(number) if number is not None else None
    return SendFailed(reason, permanent=not retryable, refusal=refusal)
