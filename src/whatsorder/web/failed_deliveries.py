"""Signed deliveries whose processing failed with an error of ours, kept to be re-driven.

A delivery that passed its signature and parsed, but whose handler raised an unexpected error
(a bug, not a busy or unreachable store, which are answered 503 and retried), is answered 500
as before. Meta, Stripe and Razorpay retry such a delivery for days; Twilio does not, unless
its fallback URL is set, so without this the customer's message would be lost to us. So it is
kept as a dead letter (`whatsorder.db.dead_letters`): its record masked as the idempotency
record's is, and as its payload, never shown, the request as it came: the body and the headers
its processing reads. An operator re-drives it from the console once the cause is fixed
(`whatsorder.web.redrive`): through the same webhook, engine, key and fingerprint, so a
delivery the provider's own retry processed meanwhile is replayed, not applied twice.

Kept once per webhook type and key (its ``delivery_key``); a second failure of the same
delivery (a retry, a fallback) adds nothing. Keeping it is best effort: if the database
cannot take it either, the original error is what the provider is answered.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from starlette.requests import Request

from whatsorder.clock import utcnow
from whatsorder.db.dead_letters import MAX_DELIVERY_KEY_CHARS
from whatsorder.ordering import services
from whatsorder.providers import razorpay, twilio
from whatsorder.web.runtime import Runtime
from whatsorder_idempotency.keys import KEY_HEADERS

log = logging.getLogger("whatsorder.web.failed_deliveries")

# Kept: only the headers a webhook's processing reads (its content type, a client's key,
# Twilio's idempotency token, Razorpay's event id). Nothing else a proxy or client may add
# (credentials, tokens, forwarded addresses) is kept; nor the signature: a re-drive is the
# operator's act, checked by the console, not by the provider's signature.
KEPT_HEADERS = frozenset(
    name.lower()
    for name in (
        "content-type",
        *KEY_HEADERS,
        twilio.IDEMPOTENCY_TOKEN_HEADER,
        razorpay.EVENT_ID_HEADER,
    )
)


@dataclass(frozen=True, slots=True)
class Kept:
    """A failed delivery as kept: which webhook, where it came, its headers and body."""

    webhook_type: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: str
    source_ip: str

    def to_payload(self) -> str:
        return json.dumps(
            {
                "webhook": self.webhook_type,
                "path": self.path,
                "headers": [list(pair) for pair in self.headers],
                "body": self.body,
                "source_ip": self.source_ip,
            }
        )

    @classmethod
    def from_payload(cls, payload: str) -> Kept:
        """The delivery as kept; ValueError if the payload is not one."""
        try:
            found = json.loads(payload)
            return cls(
                str(found["webhook"]),
                str(found["path"]),
                tuple((str(name), str(value)) for name, value in found["headers"]),
                str(found["body"]),
                str(found["source_ip"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError("This dead letter's content is not a kept delivery.") from error

    def request(self) -> Request:
        """The request as it came, for the webhook's parser (which reads its headers)."""
        scope = {
            "type": "http",
            "method": "POST",
            "path": self.path,
            "query_string": b"",
            "headers": [
                (name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers
            ],
            "client": (self.source_ip, 0),
        }
        return Request(scope)


def delivery_key(webhook_type: str, key: str) -> str:
    """The dead letter's key: the webhook type and the key, or the key's hash if that would
    not fit (two long keys must not share a dead letter)."""
    whole = f"{webhook_type}:{key}"
    if len(whole) <= MAX_DELIVERY_KEY_CHARS:
        return whole
    return f"{webhook_type}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


class Failed(Exception):
    """The handler raised ``error``, an error of ours: the delivery is worth keeping."""

    def __init__(
        self,
        error: Exception,
        *,
        provider: str,
        webhook_type: str,
        key: str,
        record: str,
        kept: Kept | None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.provider = provider
        self.webhook_type = webhook_type
        self.key = key
        self.record = record
        self.kept = kept

    async def keep(self, runtime: Runtime) -> None:
        """Keep the delivery once per webhook type and key; best effort (logged if not)."""
        reason = (
            f"Its processing failed with an unexpected error ({type(self.error).__name__}); "
            "the provider was answered 500 and the error is in the service's log."
        )
        kept = self.kept
        payload = None if kept is None or "\x00" in kept.body else kept  # text cannot hold NUL
        try:
            # The unit of work commits with its connection's transaction, begun here.
            async with runtime.database.begin() as connection:
                await services.keep_dead_letter(
                    runtime.unit_of_work(connection),
                    self.provider,
                    delivery_key(self.webhook_type, self.key),
                    reason,
                    self.record,
                    utcnow(),
                    None if payload is None else payload.to_payload(),
                )
        except Exception:  # the provider is answered the original error all the same
            log.exception("A failed delivery could not be kept for a re-drive")


def kept_from(
    request: Request, webhook_type: str, path: str, body: bytes, source_ip: str
) -> Kept | None:
    """What to keep of a request, or None if its body is not text (nothing to re-drive)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    headers = tuple(
        (name, value) for name, value in request.headers.items() if name in KEPT_HEADERS
    )
    return Kept(webhook_type, path, headers, text, source_ip)
