"""Moving an order through fulfilment: one transaction per change, one notification each.

The transaction compares-and-sets the order's state, notes the transition once (its business
key ``(order_id, to_state)``), on cancel returns the stock and reverses the debit (and moves
the payment status, placed → cancelled, by compare-and-set too), and queues the customer's
notification in the outbox under ``notify:<order id>:<state>`` — all of it commits, or none.

A transaction that loses a race (another operator, the customer's own CANCEL, a payment)
writes nothing and reads the order again: the repeat of what the winner did is answered as
such, anything else the machine decides afresh.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from whatsorder.ordering.fulfilment import Action, TransitionRefused, decide
from whatsorder.ordering.model import (
    Fulfilment,
    Order,
    OrderStatus,
    in_lock_order,
    order_number,
    reversal_for,
)
from whatsorder.ordering.notifications import notification
from whatsorder.ordering.ports import UnitOfWork

CUSTOMER = "customer"  # the actor of the customer's own CANCEL message
# Each lost race means the order moved on (or was paid); it can do that only so often.
MAX_ATTEMPTS = len(Fulfilment) + 1

OrderFinder = Callable[[UnitOfWork], Awaitable[Order | None]]


class NoSuchOrder(LookupError):
    """There is no order of that number (for this customer)."""


class TransitionRaced(TransitionRefused):
    """The order kept changing under this transition; nothing was written."""


@dataclass(frozen=True, slots=True)
class TransitionOutcome:
    """What a transition did: ``changed`` False is the repeat of one that already happened
    (nothing was written); ``from_state`` is the state the order was in when it was decided
    (on a repeat, where it is now)."""

    number: str
    action: Action
    from_state: Fulfilment
    changed: bool

    @property
    def to_state(self) -> Fulfilment:
        return self.action.target

    @property
    def summary(self) -> str:
        """What the transition did, in a sentence (the console's notice, the CLI's line)."""
        wanted = self.to_state.value
        if self.changed:
            return f"{self.number} {wanted} (it was {self.from_state.value})."
        now = "" if self.from_state is self.to_state else f"; it is {self.from_state.value} now"
        return f"{self.number} was already {wanted}{now}: nothing changed."


async def transition(
    uow: UnitOfWork, order_id: int, action: Action, actor: str, now: datetime
) -> TransitionOutcome:
    """An operator's transition of order ``order_id``, with the customer's notification.

    Raises `NoSuchOrder`, or `TransitionRefused` (the machine's reasons) having changed nothing.
    """

    async def find(unit: UnitOfWork) -> Order | None:
        return await unit.fulfilment.order(order_id)

    number = order_number(order_id)
    order, changed = await move_order(uow, number, find, action.target, actor, now, notify=True)
    assert order.number is not None
    return TransitionOutcome(order.number, action, order.fulfilment, changed)


async def move_order(
    uow: UnitOfWork,
    number: str,
    find: OrderFinder,
    wanted: Fulfilment,
    actor: str,
    now: datetime,
    *,
    notify: bool,
) -> tuple[Order, bool]:
    """Move the order ``find`` reads (``number``) to ``wanted``, each attempt in a transaction
    of its own; the order as it was decided on, and whether this call moved it (False: the
    repeat).

    ``notify``: queue the customer's notification (not for the customer's own CANCEL, whose
    reply tells them). Raises `NoSuchOrder` or `TransitionRefused`.
    """
    for _ in range(MAX_ATTEMPTS):
        async with uow:
            order = await find(uow)
            if order is None or order.number is None:
                raise NoSuchOrder(f"There is no order {number}.")
            if not decide(order.number, order.fulfilment, wanted, order.status):
                return order, False
            if await _apply(uow, order, wanted, actor, now, notify=notify):
                await uow.commit()
                return order, True
        # Lost a race: the block rolled back whatever it wrote; read the order again.
    raise TransitionRaced(
        "The order kept changing while this was asked; nothing was changed. Try again."
    )


async def _apply(
    uow: UnitOfWork, order: Order, wanted: Fulfilment, actor: str, now: datetime, *, notify: bool
) -> bool:
    """The writes of one transition; False (the caller must not commit) if a race was lost."""
    assert order.id is not None
    assert order.retailer_id is not None
    if not await uow.fulfilment.move(order.id, order.fulfilment, wanted, now):
        return False
    if not await uow.fulfilment.add_transition(order.id, order.fulfilment, wanted, actor, now):
        # The state was reached before, yet the order is not past it: books changed by hand.
        raise TransitionRefused(
            f"{order.number} has a transition to {wanted.value} already, yet it is "
            f"{order.fulfilment.value}: nothing was changed; whatsorder audit names the problem."
        )
    if wanted is Fulfilment.CANCELLED:
        if not await uow.ordering.set_order_status(
            order.id, OrderStatus.PLACED, OrderStatus.CANCELLED, now
        ):
            return False  # paid meanwhile: decided again, it is refused
        await give_back(uow, order, now)
    if notify:
        customer = await uow.fulfilment.customer(order.id)
        await uow.outbox.enqueue_notification(notification(order, wanted, customer), now)
    return True


async def give_back(uow: UnitOfWork, order: Order, now: datetime) -> None:
    """What cancelling an order undoes: its stock comes back and its debit is reversed."""
    assert order.id is not None
    assert order.retailer_id is not None
    for line in in_lock_order(order.lines):
        assert line.product_id is not None
        await uow.ordering.return_stock(line.product_id, line.quantity)
    await uow.ordering.add_ledger_entry(order.retailer_id, order.id, reversal_for(order), now)
