"""Twilio's WhatsApp routes: inbound messages and status callbacks, through `webhooks.run`."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from whatsorder import routes
from whatsorder.clock import utcnow
from whatsorder.ordering import services
from whatsorder.ordering.model import InboundMessage
from whatsorder.ordering.ports import UnitOfWork
from whatsorder.providers import twilio
from whatsorder.web import webhooks
from whatsorder.web.openapi import TWILIO_INBOUND, TWILIO_STATUS, WEBHOOK_REFUSALS, problems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime
from whatsorder.web.webhooks import Handled, Incoming, SignatureMismatch, Webhook
from whatsorder_idempotency import HandlerResult, StoredResponse, form_fingerprint

INBOUND_PATH = routes.TWILIO_INBOUND
STATUS_PATH = routes.TWILIO_STATUS
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

router = APIRouter(tags=["twilio"])

_RESPONSES = {
    200: {"content": {"text/xml": {}}, "description": "TwiML reply"},
    **problems(*WEBHOOK_REFUSALS, 415),
}


def twiml_response(text: str | None, status: int = 200) -> StoredResponse:
    return StoredResponse(
        status, twilio.twiml(text), (("content-type", twilio.TWIML_CONTENT_TYPE),)
    )


def _form(incoming: Incoming) -> list[tuple[str, str]]:
    return parse_qsl(incoming.text(), keep_blank_values=True, strict_parsing=False)


def _verify(incoming: Incoming) -> None:
    """A form (415), in UTF-8 (400), signed over the public URL Twilio called (403)."""
    request = incoming.request
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"Expected {FORM_CONTENT_TYPE}.",
        )
    params = twilio.FormParams.of(_form(incoming))
    # Twilio signs the URL it called, query string included.
    query = request.url.query
    signed_url = incoming.settings.public_url_for(incoming.path) + (f"?{query}" if query else "")
    if not twilio.signature_is_valid(incoming.secret, signed_url, params, incoming.signature):
        raise SignatureMismatch(
            "X-Twilio-Signature does not match this request and the configured public URL."
        )


TWILIO = webhooks.Provider(
    name="Twilio",
    source=twilio.SOURCE,
    secret=lambda settings: settings.twilio_auth_token,
    variable="WHATSORDER_TWILIO_AUTH_TOKEN",
    signature_header=twilio.SIGNATURE_HEADER,
    verify=_verify,
)


@dataclass(frozen=True, slots=True)
class _Form:
    """A verified form: its fields as sent (the fingerprint and the record read them)."""

    pairs: list[tuple[str, str]]

    @classmethod
    def of(cls, incoming: Incoming) -> _Form:
        pairs = _form(incoming)
        twilio.refuse_unstorable(pairs)
        return cls(pairs)

    @property
    def params(self) -> twilio.FormParams:
        return twilio.FormParams.of(self.pairs)

    def fingerprint(self, incoming: Incoming) -> str:
        return form_fingerprint("POST", incoming.path, twilio.fingerprint_pairs(self.pairs))

    def record(self) -> str:
        return twilio.redacted(self.pairs)


@dataclass(frozen=True, slots=True)
class _Inbound(_Form):
    message: InboundMessage
    provider_token: str | None
    sender_limit: webhooks.SenderLimit


def _parse_inbound(incoming: Incoming) -> _Inbound:
    form = _Form.of(incoming)
    message = twilio.inbound_message(form.params)
    return _Inbound(
        form.pairs,
        message,
        twilio.provider_token(incoming.request.headers.get(twilio.IDEMPOTENCY_TOKEN_HEADER)),
        webhooks.SenderLimit(message.sender, exempt=incoming.redrive),
    )


async def _answer_message(runtime: Runtime, inbound: _Inbound, uow: UnitOfWork) -> Handled:
    message = inbound.message
    notes: dict[str, object] = {"provider_token": inbound.provider_token}
    if not await inbound.sender_limit.allows(runtime):
        refused = await services.answer_over_limit(uow, message, utcnow())
        return Handled(HandlerResult(twiml_response(refused.reply), notes))
    outcome = await services.receive_message(uow, message, utcnow(), runtime.payment_links)
    notes.update(retailer_id=outcome.retailer_id, order_id=outcome.order_id)
    if outcome.refused:
        # Not kept: the message id's key stays free for its own sender's retries.
        refusal = _message_id_taken(message.message_id).stored()
        return Handled(HandlerResult(refusal, notes, keep=False))
    created = outcome.order_id if outcome.created else None
    return Handled(HandlerResult(twiml_response(outcome.reply), notes), created)


def _message_id_taken(message_id: str) -> Problem:
    return Problem(
        422,
        "message-id-taken",
        "Message id belongs to another sender",
        f"MessageSid {message_id} is already the id of a message from another sender; this "
        "request was not processed. Nothing was ordered.",
    )


INBOUND = Webhook(
    provider=TWILIO,
    type=twilio.WEBHOOK_TYPE_INBOUND,
    parse=_parse_inbound,
    key=lambda inbound: inbound.message.message_id,
    path=INBOUND_PATH,
    fingerprint=_Form.fingerprint,
    record=_Form.record,
    handle=_answer_message,
    client_keys=True,
)


@dataclass(frozen=True, slots=True)
class _Status(_Form):
    update: twilio.StatusUpdate
    key: str


def _parse_status(incoming: Incoming) -> _Status:
    form = _Form.of(incoming)
    return _Status(form.pairs, twilio.status_update(form.params), twilio.status_key(form.params))


async def _record_status(_runtime: Runtime, status: _Status, uow: UnitOfWork) -> Handled:
    update = status.update
    await services.record_message_status(
        uow, twilio.SOURCE, update.message_id, update.status, update.error_code, utcnow()
    )
    return Handled(HandlerResult(twiml_response(None)))


STATUS = Webhook(
    provider=TWILIO,
    type=twilio.WEBHOOK_TYPE_STATUS,
    parse=_parse_status,
    key=lambda status: status.key,
    path=STATUS_PATH,
    fingerprint=_Form.fingerprint,
    record=_Form.record,
    handle=_record_status,
    client_keys=True,
)


@router.post(
    INBOUND_PATH,
    responses=_RESPONSES,
    openapi_extra=TWILIO_INBOUND,
    summary="Twilio inbound WhatsApp message",
)
async def inbound(request: Request) -> Response:
    return await webhooks.run(request, INBOUND)


@router.post(
    STATUS_PATH,
    responses=_RESPONSES,
    openapi_extra=TWILIO_STATUS,
    summary="Twilio message status callback",
)
async def status_callback(request: Request) -> Response:
    return await webhooks.run(request, STATUS)
