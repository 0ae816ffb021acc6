"""Re-driving a dead letter: the delivery it came in, through the webhook's own processing.

Two kinds of dead letter keep what a re-drive needs. A Meta delivery's part that could not be
processed (below); and a delivery of any other webhook whose handler failed with an error of
ours (failed_deliveries.py), which runs again through `webhooks.process` from its parsing on:
the same engine, key and fingerprint, so one the provider's retry processed meanwhile replays.

A Meta dead letter keeps the signed delivery it came in (``dead_letters.payload``). A re-drive reads
it again with today's parser and runs the dead letter's part of it — the message whose content
hash is the row's key, or its chunk of statuses, or the whole delivery if that was what could
not be read — through `DeliveryItems`, exactly as the webhook route does: the same engine,
the same key (a message's wamid), the same fingerprint and the same business keys. So a
message Meta's own retry processed meanwhile is replayed, not placed again, and Meta's retry
after a re-drive is a replay too. The row is claimed first (`DeadLetterRedrives.claim`), so
two operators pressing at once run it once; the other is told who has it.

A re-drive never keeps a dead letter of its own: a part rejected again leaves the row failed,
with the reason, and re-drivable later.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from whatsorder import routes
from whatsorder.clock import utcnow
from whatsorder.ordering.model import order_number
from whatsorder.providers import meta
from whatsorder.web import meta_statuses, payments, twilio, webhooks
from whatsorder.web.answers import Processed
from whatsorder.web.failed_deliveries import Failed, Kept
from whatsorder.web.meta_items import DeliveryItems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import Runtime
from whatsorder_idempotency import Outcome

log = logging.getLogger("whatsorder.web.redrive")

NOT_NOW = (
    "could not be processed now (the store was busy, or an error was logged); re-drive it again"
)


@dataclass(frozen=True, slots=True)
class Redriven:
    """How a re-drive went: done (processed, or found processed) or failed, in words."""

    done: bool
    result: str


async def redrive(runtime: Runtime, letter_id: int, operator: str, address: str) -> Redriven:
    """Re-drive dead letter ``letter_id`` once for ``operator``; `RedriveRefused` if it is
    done, running elsewhere, has no payload or does not exist."""
    redrives = runtime.dead_letter_redrives
    claim = await redrives.claim(letter_id, operator, utcnow())
    try:
        if claim.provider == meta.SOURCE:
            outcome = await process(runtime, claim.delivery_key, claim.payload, address)
        else:
            outcome = await process_failed(runtime, claim.payload)
    except Exception:  # the row must not stay "running": say so, and keep it re-drivable
        log.exception("A dead letter's re-drive failed")
        outcome = Redriven(False, NOT_NOW)
    await redrives.finish(claim, done=outcome.done, result=outcome.result, address=address)
    return outcome


async def process(runtime: Runtime, key: str, payload: str, source_ip: str) -> Redriven:
    """Run the part of ``payload`` (a Meta delivery) that dead letter ``key`` kept."""
    body = payload.encode("utf-8")
    try:
        delivery = meta.parse_delivery(body)
    except meta.MalformedWebhook as error:
        return Redriven(False, f"rejected again: {error}")
    whole = _hash(body) == key  # the delivery as a whole could not be read before
    items = DeliveryItems(runtime, source_ip, routes.META)  # no body: it keeps no dead letter
    parts: list[tuple[bool, str]] = [
        (False, f"rejected again: {rejected.reason}")
        for rejected in delivery.rejected
        if whole or _hash(rejected.fragment) == key
    ]
    for message in delivery.messages:
        if whole or _hash(message.canonical) == key:
            parts.append(await _message(items, message))
    for chunk in meta_statuses.chunks(delivery.statuses):
        content = meta_statuses.content(chunk)
        if whole or _hash(content) == key:
            parts.append(await _statuses(items, chunk, content))
    for preference in delivery.preferences:
        if whole or _hash(preference.canonical) == key:
            parts.append(await _preference(items, preference))
    if not parts:
        if whole:
            return Redriven(True, "read this time: the delivery holds nothing to process")
        return Redriven(False, "its part is no longer found in the delivery; nothing was run")
    return Redriven(all(done for done, _ in parts), "; ".join(text for _, text in parts))


async def _message(items: DeliveryItems, message: meta.MetaMessage) -> tuple[bool, str]:
    processed: list[Processed | None] = []

    async def step() -> None:
        processed.append(await items.process_message(message))

    reason = await items.attempt(step)
    if reason is not None:
        return False, f"rejected again: {reason}"
    if not processed:
        return False, NOT_NOW
    done = processed[0]
    if done is None:
        return True, f"nothing to do: a {message.type} message asks for nothing"
    return _said(done)


def _said(processed: Processed) -> tuple[bool, str]:
    """What the engine's answer to one message means to an operator."""
    result = processed.result
    order = json.loads(result.response.body).get("order")
    if result.outcome is Outcome.REPLAYED:
        return True, f"already processed: replayed {f'order {order}' if order else 'its answer'}"
    if result.outcome is Outcome.NOT_STORED:
        return False, "not processed: its message id belongs to another sender's message"
    if processed.created_order is not None:
        return True, f"order {order_number(processed.created_order)} created"
    if order:
        return True, f"already processed: order {order} existed for this message"
    return True, "processed: the customer was answered, no order was placed"


async def _preference(items: DeliveryItems, preference: meta.PreferenceChange) -> tuple[bool, str]:
    reason = await items.attempt(partial(items.process_preference, preference))
    if reason is not None:
        return False, f"rejected again: {reason}"
    if items.unfinished:
        return False, NOT_NOW
    change = "stop" if preference.stops else "resume"
    return True, f"consent recorded (once): {change} of {preference.occurred_at:%Y-%m-%d %H:%M} UTC"


async def _statuses(
    items: DeliveryItems, chunk: meta_statuses.Chunk, content: bytes
) -> tuple[bool, str]:
    reason = await items.attempt(partial(items.process_statuses, chunk, content))
    if reason is not None:
        return False, f"rejected again: {reason}"
    if items.unfinished:
        return False, NOT_NOW
    return True, f"{len(chunk)} statuses recorded"


# The webhooks whose failed deliveries are kept, by type (Meta's route keeps its own parts).
WEBHOOKS: dict[str, webhooks.Webhook[Any]] = {
    webhook.type: webhook
    for webhook in (twilio.INBOUND, twilio.STATUS, payments.STRIPE, payments.RAZORPAY)
}


async def process_failed(runtime: Runtime, payload: str) -> Redriven:
    """Run a kept failed delivery through its webhook again, from its parsing on."""
    try:
        kept = Kept.from_payload(payload)
    except ValueError as error:
        return Redriven(False, str(error))
    webhook = WEBHOOKS.get(kept.webhook_type)
    if webhook is None:
        return Redriven(False, f"no webhook {kept.webhook_type!r} takes it now; nothing was run")
    body = kept.body.encode("utf-8")
    incoming = webhooks.Incoming(
        kept.request(), kept.path, runtime.settings, body, kept.source_ip, "", "", redrive=True
    )
    try:
        processed = await webhooks.process(runtime, webhook, incoming)
    except webhooks.NotOurConcern as ignored:
        return Redriven(True, f"read this time as {ignored.event_type}, which asks for nothing")
    except Problem as refused:
        return Redriven(False, f"rejected again: {refused.detail}")
    except Failed as failed:
        log.error("A failed delivery's re-drive failed again", exc_info=failed.error)
        return Redriven(False, f"failed again ({type(failed.error).__name__}; see the log)")
    said = _failed_said(processed)
    replayed = processed.result.outcome is Outcome.REPLAYED  # answered when it first ran
    if said.done and not replayed and webhook.provider.source == twilio.TWILIO.source:
        # Twilio's reply rides on its webhook's answer, which only Twilio would have read.
        return Redriven(True, f"{said.result}; the customer was sent no reply: tell them")
    return said


def _failed_said(processed: Processed) -> Redriven:
    result = processed.result
    status = result.response.status
    if result.outcome is Outcome.REPLAYED:
        return Redriven(True, f"already processed: replayed its answer ({status})")
    if processed.created_order is not None:
        return Redriven(True, f"order {order_number(processed.created_order)} created")
    if status >= 400:
        return Redriven(False, f"not processed: answered {status}")
    return Redriven(True, f"processed: answered {status}")


def _hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
