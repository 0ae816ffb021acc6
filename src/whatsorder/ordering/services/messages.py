"""What a customer's message does: register the sender, then place, cancel or show an order.

Every function takes the unit of work and commits explicitly; a rejected order leaves nothing
behind. The answers are plain text; the web layer wraps them for the provider.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from whatsorder.ordering import replies
from whatsorder.ordering.fulfilment import TransitionRefused
from whatsorder.ordering.grammar import (
    CancelOrder,
    PlaceOrder,
    ShowCatalogue,
    ShowHelp,
    ShowStatus,
    Unreadable,
    parse_message,
)
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
from whatsorder.ordering.services.fulfilment import CUSTOMER, NoSuchOrder, move_order


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
    uow: UnitOfWork, message: InboundMessage, now: datetime
) -> MessageOutcome:
    """Register the sender if new, then do what the message asks and say what was done."""
    retailer_id = await _register(uow, message, now)
    command = parse_message(message.text)
    if isinstance(command, PlaceOrder):
        return await place_order(uow, retailer_id, command, message, now)
    if isinstance(command, CancelOrder):
        return await cancel_order(uow, retailer_id, command.order_number, now)
    if isinstance(command, ShowStatus):
        return await order_status(uow, retailer_id, command.order_number)
    if isinstance(command, ShowCatalogue):
        async with uow:
            catalogue = await uow.ordering.catalogue()
        return MessageOutcome(replies.catalogue(catalogue.products.values()), retailer_id)
    if isinstance(command, Unreadable):
        return MessageOutcome(command.reason, retailer_id)
    assert isinstance(command, ShowHelp)
    return MessageOutcome(replies.HELP, retailer_id)


async def place_catalogue_order(
    uow: UnitOfWork, message: InboundMessage, lines: Sequence[RequestedLine], now: datetime
) -> MessageOutcome:
    """A catalogue cart (Meta's ``order`` message) becomes an order directly.

    Only the products and quantities are taken from the cart: prices come from our catalogue,
    whatever the cart said, exactly as for a typed ORDER.
    """
    retailer_id = await _register(uow, message, now)
    return await place_order(uow, retailer_id, PlaceOrder(tuple(lines)), message, now)


async def _register(uow: UnitOfWork, message: InboundMessage, now: datetime) -> int:
    async with uow:
        retailer_id = await uow.ordering.register_retailer(
            message.sender, _retailer_name(message), now
        )
        await uow.commit()
    return retailer_id


def _retailer_name(message: InboundMessage) -> str:
    """The profile name without control characters (PostgreSQL refuses NUL), else the number."""
    name = "".join(char for char in message.sender_name if unicodedata.category(char) != "Cc")
    return name.strip() or message.sender


async def place_order(
    uow: UnitOfWork,
    retailer_id: int,
    command: PlaceOrder,
    message: InboundMessage,
    now: datetime,
) -> MessageOutcome:
    """Create the order, take the stock and debit the account, once per source message."""
    async with uow:
        # The business key outlives idempotency records: a late retry finds the same order.
        existing = await uow.ordering.order_from_source(message.source, message.message_id)
        if existing is not None:
            return _placed_before(existing, retailer_id)
        catalogue = await uow.ordering.catalogue(line.sku for line in command.lines)
        rejection: str | None = None
        try:
            priced = price_order(command.lines, catalogue)
            # One lock order for every order: two orders naming the same SKUs never deadlock.
            for line in in_lock_order(priced.lines):
                assert line.product_id is not None
                if not await uow.ordering.take_stock(line.product_id, line.quantity):
                    raise OrderRejected(f"{line.sku}: not enough left in stock.")
        except OrderRejected as rejected:
            rejection = str(rejected)
        else:
            order = await uow.ordering.add_order(
                retailer_id, priced, message.source, message.message_id, now
            )
            if order is not None:
                await uow.ordering.add_ledger_entry(retailer_id, order.id, debit_for(order), now)
                await uow.commit()
                return MessageOutcome(
                    replies.order_placed(order), retailer_id, order.id, created=True
                )
    # A copy of this message that came under another idempotency key may have placed it while
    # we waited: it found the order's key taken (add_order), or the stock it needed gone to
    # that very order. Leaving the block rolled our writes back; that order is the answer.
    async with uow:
        existing = await uow.ordering.order_from_source(message.source, message.message_id)
    if existing is not None:
        return _placed_before(existing, retailer_id)
    assert rejection is not None  # add_order found an order, and orders are never deleted
    return MessageOutcome(replies.order_rejected(rejection), retailer_id)


def _placed_before(order: Order, retailer_id: int) -> MessageOutcome:
    """The answer to a message whose order exists: the same confirmation, to its sender only."""
    if order.retailer_id != retailer_id:
        return MessageOutcome(replies.MESSAGE_ID_TAKEN, retailer_id, refused=True)
    return MessageOutcome(replies.order_placed(order), retailer_id, order.id)


async def cancel_order(
    uow: UnitOfWork, retailer_id: int, number: str, now: datetime
) -> MessageOutcome:
    """Cancel an unpaid order not yet dispatched: its stock comes back, its debit is reversed,
    and its fulfilment is cancelled by the customer (the reply is their notification)."""
    order_id = order_id_from_number(number)
    if order_id is None:
        return MessageOutcome(replies.no_such_order(number), retailer_id)

    async def find(unit: UnitOfWork) -> Order | None:
        return await unit.ordering.order_of_retailer(retailer_id, order_id)

    try:
        order, cancelled = await move_order(
            uow, number, find, Fulfilment.CANCELLED, CUSTOMER, now, notify=False
        )
    except NoSuchOrder:
        return MessageOutcome(replies.no_such_order(number), retailer_id)
    except TransitionRefused:
        async with uow:
            refused = await find(uow)
        assert refused is not None  # orders are never deleted
        return MessageOutcome(replies.cannot_cancel(refused), retailer_id, order_id)
    if not cancelled:
        return MessageOutcome(replies.cannot_cancel(order), retailer_id, order_id)
    return MessageOutcome(replies.order_cancelled(order), retailer_id, order_id)


async def order_status(uow: UnitOfWork, retailer_id: int, number: str | None) -> MessageOutcome:
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
        return MessageOutcome(replies.no_such_order(number), retailer_id)
    return MessageOutcome(replies.order_status(order), retailer_id, order.id)
