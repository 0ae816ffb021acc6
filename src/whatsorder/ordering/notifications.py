"""What the customer is told when an operator moves their order on: one message per change.

A notification is written to the outbox in the transition's own transaction, keyed
``notify:<order id>:<state>``: the machine reaches a state once, so the key is the business key
of the message, and a second press, a retry or a crash before commit can never queue two. The
texts are free-form text in the customer's language (the gettext catalogues,
`whatsorder.ordering.i18n`), one pure function per event; ``params`` is what a template is
filled with where free-form text may not be sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from whatsorder.ordering.i18n import translator
from whatsorder.ordering.model import Fulfilment, Order
from whatsorder.ordering.replies import money

META = "meta"  # the providers' names, as orders.source spells them
_WHATSAPP_PREFIX = "whatsapp:+"


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who hears about an order: the retailer's identity, the provider its order came through
    (which sends the notification) and its language (None: English)."""

    whatsapp_id: str
    provider: str
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """One outbox row about an order's change of state."""

    order_id: int
    event: Fulfilment
    provider: str
    recipient: str
    body: str
    language: str | None
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return notification_key(self.order_id, self.event)


def notification_key(order_id: int, state: Fulfilment) -> str:
    """The outbox key of the notification that an order reached ``state``."""
    return f"notify:{order_id}:{state.value}"


def recipient(provider: str, whatsapp_id: str) -> str:
    """The address ``provider``'s sender needs for a retailer.

    Retailers are known as Twilio spells them, ``whatsapp:+<E.164>``, whichever provider
    brought their messages. Twilio sends to exactly that; Meta's Cloud API wants the bare
    number (or, for a user who hides it, the business-scoped user id kept as the identity).
    """
    if provider == META:
        return whatsapp_id.removeprefix(_WHATSAPP_PREFIX)
    return whatsapp_id


def params(order: Order) -> dict[str, str]:
    """What a template about ``order`` is filled with."""
    assert order.number is not None
    return {"order_number": order.number, "total": money(order.total, order.currency)}


def confirmed(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _(
        "Your order %(number)s (%(total)s) is confirmed. We will tell you when it is on its way."
    ) % {"number": order.number, "total": money(order.total, order.currency)}


def packed(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Your order %(number)s is packed and will be dispatched soon.") % {
        "number": order.number
    }


def dispatched(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Your order %(number)s is on its way.") % {"number": order.number}


def delivered(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Your order %(number)s has been delivered. Thank you for ordering with us!") % {
        "number": order.number
    }


def cancelled(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _(
        "Your order %(number)s has been cancelled by the shop. "
        "%(total)s has been reversed on your account."
    ) % {"number": order.number, "total": money(order.total, order.currency)}


TEXTS: Mapping[Fulfilment, Callable[[Order, str | None], str]] = {
    Fulfilment.CONFIRMED: confirmed,
    Fulfilment.PACKED: packed,
    Fulfilment.DISPATCHED: dispatched,
    Fulfilment.DELIVERED: delivered,
    Fulfilment.CANCELLED: cancelled,
}


def notification(order: Order, state: Fulfilment, customer: Recipient) -> Notification:
    """The message telling ``customer`` that ``order`` reached ``state``."""
    assert order.id is not None
    return Notification(
        order_id=order.id,
        event=state,
        provider=customer.provider,
        recipient=recipient(customer.provider, customer.whatsapp_id),
        body=TEXTS[state](order, customer.language),
        language=customer.language,
        params=params(order),
    )
