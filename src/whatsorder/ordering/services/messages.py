"""What a customer's message does: register the sender, then place, cancel or show an order.

Every function takes the unit of work and commits explicitly; a rejected order leaves nothing
behind. The answers are plain text; the web layer wraps them for the provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from whatsorder.ordering import replies
from whatsorder.ordering.fulfilment import TransitionRefused
from whatsorder.ordering.grammar import (
    CancelOrder,
    ChangeConsent,
    ChooseLanguage,
    PlaceOrder,
    RequestPayment,
    ShowCatalogue,
    ShowHelp,
    ShowStatus,
    Unreadable,
    parse_message,
)
from whatsorder.ordering.i18n import N_, Phrase
from whatsorder.ordering.link_ports import PaymentLinks
from whatsorder.ordering.model import (
    Fulfilment,
    InboundMessage,
    Order,
    OrderRejected,
    RequestedLine,
    debit_for,
    in_lock_order,
    order_id_from_number,
    price_order,
)
from whatsorder.ordering.ports import UnitOfWork
from whatsorder.ordering.services.customers import change_consent, choose_language, register
from whatsorder.ordering.services.fulfilment import CUSTOMER, NoSuchOrder, move_order
from whatsorder.ordering.services.payment_links import request_payment_link


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What a message did: the reply, and the order it created or named.

    ``created`` is true only when this message placed a new order. ``refused`` says the
    message was not processed at all: its provider message id already belongs to a message
    of another sender, whose order must neither be shown nor be taken for this one.
    """

    reply: str
    retailer_id: int
    order_id: int | None = None
    created: bool = False
    refused: bool = False


async def receive_message(
    uow: UnitOfWork,
    message: InboundMessage,
    now: datetime,
    links: PaymentLinks | None = None,
) -> MessageOutcome:
    """Register the sender if new, then do what the message asks and say what was done, in
    the customer's language. ``links``: the provider that makes payment links (None: PAY
    answers that paying by link is not set up)."""
    customer = await register(uow, message, now)
    retailer_id, language = customer.id, customer.language
    command = parse_message(message.text)
    if isinstance(command, PlaceOrder):
        return await place_order(uow, retailer_id, command, message, now, language)
    if isinstance(command, CancelOrder):
        return await cancel_order(uow, retailer_id, command.order_number, now, language)
    if isinstance(command, RequestPayment):
        paying = await request_payment_link(
            uow, links, command.order_number, now, retailer_id=retailer_id, language=language
        )
        return MessageOutcome(paying.reply, retailer_id, paying.order_id)
    if isinstance(command, ShowStatus):
        return await order_status(uow, retailer_id, command.order_number, language)
    if isinstance(command, ShowCatalogue):
        async with uow:
            catalogue = await uow.ordering.catalogue()
        reply = replies.catalogue(catalogue.products.values(), language)
        return MessageOutcome(reply, retailer_id)
    if isinstance(command, ChooseLanguage):
        return MessageOutcome(await choose_language(uow, customer, command), retailer_id)
    if isinstance(command, ChangeConsent):
        reply = await change_consent(uow, customer, command, message, now)
        return MessageOutcome(reply, retailer_id)
    if isinstance(command, Unreadable):
        return MessageOutcome(command.why.said_in(language), retailer_id)
    assert isinstance(command, ShowHelp)
    return MessageOutcome(replies.said(replies.HELP, language), retailer_id)


async def answer_over_limit(
    uow: UnitOfWork, message: InboundMessage, now: datetime
) -> MessageOutcome:
    """A sender over the per-sender limit: noted as having written, asked (in their language)
    to wait, and nothing else done."""
    customer = await register(uow, message, now)
    return MessageOutcome(replies.said(replies.RATE_LIMITED, customer.language), customer.id)


async def place_catalogue_order(
    uow: UnitOfWork, message: InboundMessage, lines: Sequence[RequestedLine], now: datetime
) -> MessageOutcome:
    """A catalogue cart (Meta's ``order`` message) becomes an order directly.

    Only the products and quantities are taken from the cart: prices come from our catalogue,
    whatever the cart said, exactly as for a typed ORDER.
    """
    customer = await register(uow, message, now)
    command = PlaceOrder(tuple(lines))
    return await place_order(uow, customer.id, command, message, now, customer.language)


async def place_order(
    uow: UnitOfWork,
    retailer_id: int,
    command: PlaceOrder,
    message: InboundMessage,
    now: datetime,
    language: str | None = None,
) -> MessageOutcome:
    """Create the order, take the stock and debit the account, once per source message."""
    async with uow:
        # The business key outlives idempotency records: a late retry finds the same order.
        existing = await uow.ordering.order_from_source(message.source, message.message_id)
        if existing is not None:
            return _placed_before(existing, retailer_id, language)
        catalogue = await uow.ordering.catalogue(line.sku for line in command.lines)
        rejection: OrderRejected | None = None
        try:
            priced = price_order(command.lines, catalogue)
            # One lock order for every order: two orders naming the same SKUs never deadlock.
            for line in in_lock_order(priced.lines):
                assert line.product_id is not None
                if not await uow.ordering.take_stock(line.product_id, line.quantity):
                    raise OrderRejected(
                        Phrase.of(N_("%(sku)s: not enough left in stock"), sku=line.sku)
                    )
        except OrderRejected as rejected:
            rejection = rejected
        else:
            order = await uow.ordering.add_order(
                retailer_id, priced, message.source, message.message_id, now
            )
            if order is not None:
                await uow.ordering.add_ledger_entry(retailer_id, order.id, debit_for(order), now)
                await uow.commit()
                return MessageOutcome(
                    replies.order_placed(order, language), retailer_id, order.id, created=True
                )
    # A copy of this message that came under another idempotency key may have placed it while
    # we waited: it found the order's key taken (add_order), or the stock it needed gone to
    # that very order. Leaving the block rolled our writes back; that order is the answer.
    async with uow:
        existing = await uow.ordering.order_from_source(message.source, message.message_id)
    if existing is not None:
        return _placed_before(existing, retailer_id, language)
    assert rejection is not None  # add_order found an order, and orders are never deleted
    reply = replies.order_rejected(rejection.said_in(language), language)
    return MessageOutcome(reply, retailer_id)


def _placed_before(order: Order, retailer_id: int, language: str | None) -> MessageOutcome:
    """The answer to a message whose order exists: the same confirmation, to its sender only."""
    if order.retailer_id != retailer_id:
        reply = replies.said(replies.MESSAGE_ID_TAKEN, language)
        return MessageOutcome(reply, retailer_id, refused=True)
    return MessageOutcome(replies.order_placed(order, language), retailer_id, order.id)


async def cancel_order(
    uow: UnitOfWork, retailer_id: int, number: str, now: datetime, language: str | None = None
) -> MessageOutcome:
    """Cancel an unpaid order not yet dispatched: its stock comes back, its debit is reversed,
    and its fulfilment is cancelled by the customer (the reply is their notification)."""
    order_id = order_id_from_number(number)
    if order_id is None:
        return MessageOutcome(replies.no_such_order(number, language), retailer_id)

    async def find(unit: UnitOfWork) -> Order | None:
        return await unit.ordering.order_of_retailer(retailer_id, order_id)

    try:
        order, cancelled = await move_order(
            uow, number, find, Fulfilment.CANCELLED, CUSTOMER, now, notify=False
        )
    except NoSuchOrder:
        return MessageOutcome(replies.no_such_order(number, language), retailer_id)
    except TransitionRefused:
        async with uow:
            refused = await find(uow)
        assert refused is not None  # orders are never deleted
        return MessageOutcome(replies.cannot_cancel(refused, language), retailer_id, order_id)
    if not cancelled:
        return MessageOutcome(replies.cannot_cancel(order, language), retailer_id, order_id)
    return MessageOutcome(replies.order_cancelled(order, language), retailer_id, order_id)


async def order_status(
    uow: UnitOfWork, retailer_id: int, number: str | None, language: str | None = None
) -> MessageOutcome:
    async with uow:
        if number is None:
            order = await uow.ordering.latest_order(retailer_id)
        else:
            order_id = order_id_from_number(number)
            order = (
                None
                if order_id is None
                else await uow.ordering.order_of_retailer(retailer_id, order_id)
            )
    if order is None:
        return MessageOutcome(replies.no_such_order(number, language), retailer_id)
    return MessageOutcome(replies.order_status(order, language), retailer_id, order.id)
