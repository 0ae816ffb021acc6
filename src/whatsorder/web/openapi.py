"""What ``/docs`` says of the webhook routes: their bodies, headers and refusals.

The webhook handlers read their raw bodies themselves (a signature covers the bytes as sent,
so nothing may parse them first), which leaves FastAPI nothing to infer a schema from. These
declarations, passed as ``openapi_extra`` and ``responses``, describe the requests as the
providers send them and every answer a route gives, so the document is truthful enough for
a client, or a fuzzer, to reach each route.
"""

from __future__ import annotations

from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A stable URI per kind of error."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "rule": {"type": "string", "description": "Invalid keys: the rule the key broke."},
    },
}

_WHY = {
    400: "Malformed request: a body, field, key or event id that cannot be used",
    401: "Signature (or credentials) missing",
    403: "Signature wrong, not HTTPS, or credentials wrong",
    408: "Request body not received in time (WHATSORDER_BODY_READ_TIMEOUT_SECONDS)",
    409: "A request with this key is still in progress (see Retry-After)",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Idempotency key used before with another request",
    429: "Too many requests from this address (see Retry-After)",
    503: "Provider not configured, or the store busy or unavailable (see Retry-After)",
}


def problems(*statuses: int, why: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for refusals answered as RFC 9457 problem details.

    ``why`` replaces the usual description of a status where a route means something else.
    """
    return {
        status: {
            "description": (why or {}).get(status) or _WHY[status],
            "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


# Every signed webhook: size and pace, HTTPS, per-IP limit, signature, key, store
# (docs/architecture.md §2).
WEBHOOK_REFUSALS = (400, 401, 403, 408, 409, 413, 422, 429, 503)


def header(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


IDEMPOTENCY_KEY = header(
    "Idempotency-Key",
    "Optional client key (1-255 visible ASCII, an RFC 9651 string or token, or bare); "
    "else the provider's own id is the key.",
)


def _body(content_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {content_type: {"schema": schema}}}


def _form(required: list[str], fields: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": {name: {"type": "string"} for name in fields},
        "additionalProperties": {"type": "string"},
    }


TWILIO_INBOUND: dict[str, Any] = {
    "parameters": [
        header(
            "X-Twilio-Signature",
            "Base64 HMAC-SHA1 of the public URL and the sorted form fields (auth token).",
            required=True,
        ),
        IDEMPOTENCY_KEY,
        header("I-Twilio-Idempotency-Token", "Twilio's own retry token; recorded only."),
    ],
    "requestBody": _body(
        FORM_CONTENT_TYPE,
        _form(
            ["MessageSid", "From"],
            [
                *("MessageSid", "SmsMessageSid", "AccountSid", "From", "To", "Body"),
                *("ProfileName", "WaId", "NumMedia", "NumSegments"),
            ],
        ),
    ),
}

TWILIO_STATUS: dict[str, Any] = {
    "parameters": TWILIO_INBOUND["parameters"],
    "requestBody": _body(
        FORM_CONTENT_TYPE,
        _form(
            ["MessageSid", "MessageStatus"],
            ["MessageSid", "SmsSid", "AccountSid", "From", "To", "MessageStatus", "ErrorCode"],
        ),
    ),
}

_OBJECT = {"type": "object"}

META_DELIVERY: dict[str, Any] = {
    "parameters": [
        header(
            "X-Hub-Signature-256",
            "sha256= and the hex HMAC-SHA256 of the raw body (app secret).",
            required=True,
        )
    ],
    "requestBody": _body(
        JSON_CONTENT_TYPE,
        {
            "type": "object",
            "required": ["object", "entry"],
            "properties": {
                "object": {"type": "string", "enum": ["whatsapp_business_account"]},
                "entry": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "changes": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "field": {"type": "string"},
                                        "value": {
                                            "type": "object",
                                            "properties": {
                                                "messaging_product": {"type": "string"},
                                                "contacts": {"type": "array", "items": _OBJECT},
                                                "messages": {"type": "array", "items": _OBJECT},
                                                "statuses": {"type": "array", "items": _OBJECT},
                                                "user_preferences": {
                                                    "type": "array",
                                                    "items": _OBJECT,
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    ),
}

META_HANDSHAKE: dict[str, Any] = {
    "parameters": [
        {"name": name, "in": "query", "required": True, "schema": {"type": "string"}}
        for name in ("hub.mode", "hub.verify_token", "hub.challenge")
    ]
}

STRIPE_EVENT: dict[str, Any] = {
    "parameters": [
        header(
            "Stripe-Signature",
            "t=<unix time>,v1=<hex HMAC-SHA256 of '{t}.{body}'> (endpoint secret).",
            required=True,
        )
    ],
    "requestBody": _body(
        JSON_CONTENT_TYPE,
        {
            "type": "object",
            "required": ["id", "type", "data"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "type": {"type": "string"},
                "data": {
                    "type": "object",
                    "required": ["object"],
                    "properties": {"object": _OBJECT},
                },
            },
        },
    ),
}

RAZORPAY_EVENT: dict[str, Any] = {
    "parameters": [
        header(
            "X-Razorpay-Signature",
            "Hex HMAC-SHA256 of the raw body (webhook secret).",
            required=True,
        ),
        header("x-razorpay-event-id", "The delivery's id, the same on every retry.", required=True),
    ],
    "requestBody": _body(
        JSON_CONTENT_TYPE,
        {
            "type": "object",
            "required": ["event", "payload"],
            "properties": {
                "entity": {"type": "string"},
                "event": {"type": "string"},
                "contains": {"type": "array", "items": {"type": "string"}},
                "payload": _OBJECT,
            },
        },
    ),
}
