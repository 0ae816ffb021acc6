"""``PAY ORD-…``: a payment link for the order's outstanding amount, made once (issue #17).

The link is keyed by the order, the amount and the currency, here (``UNIQUE(provider,
reference)``) and at the provider (Stripe's ``Idempotency-Key``, Razorpay's ``reference_id``).
A link stored for the key is answered as it is. Otherwise the provider is asked with no write
of ours open, so a slow provider holds no row lock; a repeat at any moment (a retried message,
a second PAY at once, a retry after a crash between the provider's answer and our commit) asks
with the same key and is given the same link, which is then stored once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from whatsorder.ordering import link_replies, replies
from whatsorder.ordering.link_ports import LinkFailed, LinkRequest, LinkUnitOfWork, PaymentLinks
from whatsorder.ordering.model import OrderStatus, order_id_from_number
from whatsorder.ordering.payment_model import (
    LinkStatus,
    PayableOrder,
    StoredLink,
    link_reference,
)


@dataclass(frozen=True, slots=True)
class LinkOutcome:
    """What a PAY did: the answer, the order it named, the link, and whether anything failed
    that an operator must see (``failure``: the provider's message)."""

    reply: str
    order_id: int | None = None
    link: StoredLink | None = None
    failure: str | None = None


async def request_payment_link(
    uow: LinkUnitOfWork,
    links: PaymentLinks | None,
    number: str,
    now: datetime,
    *,
    retailer_id: int | None = None,
) -> LinkOutcome:
    """The link for order ``number``'s outstanding amount; ``retailer_id`` None: an operator
    asks, for any order; else only the retailer's own orders are found."""
    order_id = order_id_from_number(number)
    async with uow:
        order = None if order_id is None else await uow.payments.order(order_id)
        if order is None or (retailer_id is not None and order.retailer_id != retailer_id):
            return LinkOutcome(replies.no_such_order(number))
        refusal = _nothing_to_pay(order)
        if refusal is not None:
            return LinkOutcome(refusal, order.id)
        if links is None:
            return LinkOutcome(link_replies.links_not_set_up(), order.id)
        wanted = StoredLink(
            order.id,
            links.provider,
            link_reference(order.id, order.total, order.currency),
            order.total,
            order.currency.upper(),
        )
        stored = await uow.payment_links.find(wanted.provider, wanted.reference)
    if stored is not None and stored.status is LinkStatus.LIVE and stored.url:
        return LinkOutcome(
            link_replies.pay_by_link(order, stored.amount, stored.url), order.id, stored
        )
    request = LinkRequest(
        order.number, wanted.amount, wanted.currency, f"Order {order.number}", wanted.reference
    )
    try:
        made = await links.create(request)
    except LinkFailed as failure:
        if not failure.permanent:
            return LinkOutcome(
                link_replies.link_unavailable_now(order), order.id, failure=str(failure)
            )
        async with uow:
            await uow.payment_links.store_failure(wanted, str(failure), now)
            await uow.commit()
        return LinkOutcome(link_replies.link_refused(order), order.id, failure=str(failure))
    async with uow:
        stored = await uow.payment_links.store_live(wanted, made.link_id, made.url, now)
        await uow.commit()
    assert stored.url is not None
    return LinkOutcome(link_replies.pay_by_link(order, stored.amount, stored.url), order.id, stored)


def _nothing_to_pay(order: PayableOrder) -> str | None:
    """Why an order takes no payment now; None when it awaits one."""
    if order.status is OrderStatus.PAID:
        return link_replies.already_paid(order)
    if order.status is not OrderStatus.PLACED:
        return link_replies.not_payable(order)
    if order.total <= 0:
        return link_replies.nothing_outstanding(order)
    return None
