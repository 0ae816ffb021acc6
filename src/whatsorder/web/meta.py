"""Meta's WhatsApp Cloud API webhook: the verification handshake and deliveries.

A delivery may carry many messages and statuses, and Meta may redeliver them batched
differently: split over several requests, or merged with new ones. So the idempotency engine
runs once per message, keyed by its ``wamid`` — never once per request, whose key (a body hash)
would see "A+B+C" and "A+B+C+D" as different requests and place A, B and C twice. Each message
commits its claim, its order and its reply (to the outbox) in one transaction, so a delivery
cut short leaves whole messages behind, and Meta's retry replays them and processes the rest.
Statuses, whose effect only ever moves forward, are recorded a chunk per transaction (see
`whatsorder.web.meta_statuses`).

Only signature problems are refused (4xx): Meta retries anything but 200 for seven days, so a
signed payload we cannot process is answered 200 and kept as a dead letter. A transient failure
answers 503 so that Meta does retry.
"""

from __future__ import annotations

import hmac
from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from whatsorder import observability, routes
from whatsorder.providers import meta
from whatsorder.settings import secret
from whatsorder.web import meta_statuses, refusals, webhooks
from whatsorder.web.answers import JSON_CONTENT_TYPE, json_response
from whatsorder.web.guards import client_ip, require_https
from whatsorder.web.meta_items import DeliveryItems
from whatsorder.web.openapi import META_DELIVERY, META_HANDSHAKE, problems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import runtime_of
from whatsorder.web.webhooks import Incoming, SignatureMismatch

PATH = routes.META
MAX_BODY_BYTES = 3 * 1024 * 1024  # Meta's payloads reach 3 MB

router = APIRouter(tags=["meta"])


def _verify(incoming: Incoming) -> None:
    if not meta.signature_is_valid(incoming.secret, incoming.body, incoming.signature):
        raise SignatureMismatch(
            "X-Hub-Signature-256 does not match the body and the configured app secret."
        )


META = webhooks.Provider(
    name="Meta",
    source=meta.SOURCE,
    secret=lambda settings: settings.meta_app_secret,
    variable="WHATSORDER_META_APP_SECRET",
    signature_header=meta.SIGNATURE_HEADER,
    verify=_verify,
    max_body_bytes=MAX_BODY_BYTES,
)


@router.get(
    PATH,
    response_class=PlainTextResponse,
    summary="Meta webhook verification handshake",
    responses={
        200: {"content": {"text/plain": {}}, "description": "hub.challenge, echoed"},
        **problems(403, 429, 503),
    },
    openapi_extra=META_HANDSHAKE,
)
async def verify_subscription(request: Request) -> Response:
    """Answer Meta's subscription check: ``hub.challenge`` if mode and verify token match."""
    runtime = runtime_of(request)
    require_https(request, runtime.settings)
    await webhooks.check_ip(runtime, client_ip(request, runtime.settings))
    expected = secret(runtime.settings.meta_verify_token)
    if expected is None:
        raise refusals.not_configured("Meta", "WHATSORDER_META_VERIFY_TOKEN")
    query = request.query_params
    token = query.get("hub.verify_token", "")
    challenge = query.get("hub.challenge", "")
    token_matches = hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))
    if query.get("hub.mode") != "subscribe" or not token_matches or not challenge:
        raise Problem(
            403,
            "verification-refused",
            "Verification refused",
            "hub.mode must be subscribe, hub.verify_token must match the configured verify "
            "token, and hub.challenge must be present.",
        )
    return PlainTextResponse(challenge)


@router.post(
    PATH,
    summary="Meta WhatsApp Cloud API webhook delivery",
    responses={
        200: {"content": {JSON_CONTENT_TYPE: {}}, "description": "Every item processed or kept"},
        **problems(401, 403, 408, 413, 429, 503),
    },
    openapi_extra=META_DELIVERY,
)
async def receive_delivery(request: Request) -> Response:
    """Process every message and status of a delivery once; 200 when all are done."""
    observability.bind(webhook_type=meta.SOURCE)
    runtime = runtime_of(request)
    incoming = await webhooks.receive(request, runtime, META, PATH)
    body = incoming.body
    batch = DeliveryItems(runtime, incoming.source_ip, PATH, body)
    try:
        delivery = meta.parse_delivery(body)
    except meta.MalformedWebhook as error:
        await batch.dead_letter(str(error), body)
        return _received(0, 0, dead_lettered=1)
    for rejected in delivery.rejected:
        await batch.keep(rejected.reason, rejected.fragment)
    for message in delivery.messages:
        await batch.settle(partial(batch.process_message, message), message.canonical)
    for chunk in meta_statuses.chunks(delivery.statuses):
        content = meta_statuses.content(chunk)
        await batch.settle(partial(batch.process_statuses, chunk, content), content, len(chunk))
    for preference in delivery.preferences:
        await batch.settle(partial(batch.process_preference, preference), preference.canonical)
    if batch.unfinished:
        raise batch.incomplete(
            len(delivery.messages) + len(delivery.statuses) + len(delivery.preferences)
        )
    return _received(
        len(delivery.messages),
        len(delivery.statuses),
        dead_lettered=batch.dead_lettered,
        preferences=len(delivery.preferences),
    )


def _received(
    messages: int, statuses: int, *, dead_lettered: int, preferences: int = 0
) -> Response:
    answer = {"received": messages, "statuses": statuses, "dead_lettered": dead_lettered}
    if preferences:  # the user_preferences field: said only when the delivery had some
        answer["preferences"] = preferences
    return json_response(answer)
