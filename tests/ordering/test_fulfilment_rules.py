"""The fulfilment machine's rules, and the transition service over an in-memory unit of work."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fake_uow import FakeUnitOfWork
from whatsorder.ordering import notifications, replies, services
from whatsorder.ordering.fulfilment import (
    Action,
    IllegalTransition,
    RefundFirst,
    TransitionRefused,
    decide,
    next_actions,
    next_states,
)
from whatsorder.ordering.model import (
    EntryType,
    Fulfilment,
    InboundMessage,
    OrderStatus,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = "whatsapp:+910000000001"
F = Fulfilment
PLACED = OrderStatus.PLACED


# The machine alone.


def test_each_state_moves_one_step_on_and_cancel_is_allowed_until_dispatched() -> None:
    assert next_states(F.PLACED) == (F.CONFIRMED, F.CANCELLED)
    assert next_states(F.CONFIRMED) == (F.PACKED, F.CANCELLED)
    assert next_states(F.PACKED) == (F.DISPATCHED, F.CANCELLED)
    assert next_states(F.DISPATCHED) == (F.DELIVERED,)
    assert next_states(F.DELIVERED) == ()
    assert next_states(F.CANCELLED) == ()
    assert next_actions(F.PACKED) == (Action.DISPATCH, Action.CANCEL)


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (F.PLACED, F.CONFIRMED),
        (F.CONFIRMED, F.PACKED),
        (F.PACKED, F.DISPATCHED),
        (F.DISPATCHED, F.DELIVERED),
        (F.PLACED, F.CANCELLED),
        (F.CONFIRMED, F.CANCELLED),
        (F.PACKED, F.CANCELLED),
    ],
)
def test_the_legal_steps_move(current: Fulfilment, wanted: Fulfilment) -> None:
    assert decide("ORD-000001", current, wanted, PLACED) is True


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (F.CONFIRMED, F.CONFIRMED),
        (F.PACKED, F.CONFIRMED),  # a stale page: the confirmation happened
        (F.DELIVERED, F.DISPATCHED),
        (F.CANCELLED, F.CANCELLED),
    ],
)
def test_a_state_already_reached_is_the_repeat_not_an_error(
    current: Fulfilment, wanted: Fulfilment
) -> None:
    assert decide("ORD-000001", current, wanted, PLACED) is False


@pytest.mark.parametrize(
    ("current", "wanted", "says"),
    [
        (F.PLACED, F.PACKED, "the next step is confirm"),
        (F.PLACED, F.DELIVERED, "the next step is confirm"),
        (F.CONFIRMED, F.DISPATCHED, "the next step is pack"),
        (F.CANCELLED, F.DELIVERED, "a cancelled order cannot be delivered"),
        (F.CANCELLED, F.CONFIRMED, "a cancelled order cannot be confirmed"),
        (F.DISPATCHED, F.CANCELLED, "cannot be cancelled once dispatched"),
        (F.DELIVERED, F.CANCELLED, "cannot be cancelled once dispatched"),
    ],
)
def test_an_illegal_step_is_refused_saying_why(
    current: Fulfilment, wanted: Fulfilment, says: str
) -> None:
    with pytest.raises(IllegalTransition, match=says):
        decide("ORD-000001", current, wanted, PLACED)


def test_a_paid_order_is_refunded_before_it_can_be_cancelled() -> None:
    with pytest.raises(RefundFirst, match="ORD-000001 is paid: refund it"):
        decide("ORD-000001", F.CONFIRMED, F.CANCELLED, OrderStatus.PAID)
    with pytest.raises(IllegalTransition, match="only an unpaid order"):
        decide("ORD-000001", F.PLACED, F.CANCELLED, OrderStatus.REFUNDED)
    # Paid orders move forward all the same.
    assert decide("ORD-000001", F.PLACED, F.CONFIRMED, OrderStatus.PAID) is True


# The service, in memory.


async def placed(
    uow: FakeUnitOfWork, text: str = "ORDER 2 x ATTA-5KG", source: str = "twilio"
) -> int:
    message = InboundMessage(source, f"{source}-1", ALICE, "Alice", text)
    outcome = await services.receive_message(uow, message, NOW)
    assert outcome.created
    assert outcome.order_id is not None
    return outcome.order_id


async def test_a_transition_moves_the_order_notes_it_and_queues_one_notification() -> None:
    uow = FakeUnitOfWork()
    order_id = await placed(uow)

    outcome = await services.transition(uow, order_id, Action.CONFIRM, "asha", NOW)

    assert (outcome.changed, outcome.from_state, outcome.to_state) == (True, F.PLACED, F.CONFIRMED)
    assert outcome.summary == "ORD-000001 confirmed (it was placed)."
    order = uow.books.orders[order_id]
    assert order.fulfilment is F.CONFIRMED
    assert uow.books.transitions == {(order_id, F.CONFIRMED): (F.PLACED, "asha")}
    (note,) = uow.books.notifications.values()
    assert note.idempotency_key == "notify:1:confirmed"
    assert (note.provider, note.recipient, note.event) == ("twilio", ALICE, F.CONFIRMED)
    assert note.body == notifications.confirmed(order)
    assert note.params == {"order_number": "ORD-000001", "total": "₹530.00"}


async def test_the_same_transition_again_changes_nothing_and_notifies_nobody() -> None:
    uow = FakeUnitOfWork()
    order_id = await placed(uow)
    await services.transition(uow, order_id, Action.CONFIRM, "asha", NOW)
    commits = uow.commits

    again = await services.transition(uow, order_id, Action.CONFIRM, "ravi", NOW)

    assert again.changed is False
    assert again.summary == "ORD-000001 was already confirmed: nothing changed."
    assert uow.commits == commits
    assert len(uow.books.transitions) == 1
    assert len(uow.books.notifications) == 1


async def test_an_illegal_transition_changes_nothing() -> None:
    uow = FakeUnitOfWork()
    order_id = await placed(uow)
    with pytest.raises(IllegalTransition):
        await services.transition(uow, order_id, Action.DISPATCH, "asha", NOW)
    assert uow.books.orders[order_id].fulfilment is F.PLACED
    assert not uow.books.transitions
    assert not uow.books.notifications


async def test_a_transition_the_books_already_hold_changes_nothing_and_says_why() -> None:
    uow = FakeUnitOfWork()
    order_id = await placed(uow)
    uow.books.transitions[(order_id, F.CONFIRMED)] = (F.PLACED, "someone, by hand")

    with pytest.raises(TransitionRefused, match="has a transition to confirmed already"):
        await services.transition(uow, order_id, Action.CONFIRM, "asha", NOW)

    assert uow.books.orders[order_id].fulfilment is F.PLACED
    assert not uow.books.notifications


async def test_an_unknown_order_is_named() -> None:
    with pytest.raises(services.NoSuchOrder, match="There is no order ORD-000042"):
        await services.transition(FakeUnitOfWork(), 42, Action.CONFIRM, "asha", NOW)


async def test_an_operator_cancel_returns_the_stock_reverses_the_debit_and_tells_the_customer() -> (
    None
):
    uow = FakeUnitOfWork()
    stock = uow.books.stock("ATTA-5KG")
    order_id = await placed(uow)
    await services.transition(uow, order_id, Action.CONFIRM, "asha", NOW)

    await services.transition(uow, order_id, Action.CANCEL, "asha", NOW)
    await services.transition(uow, order_id, Action.CANCEL, "asha", NOW)

    order = uow.books.orders[order_id]
    assert (order.fulfilment, order.status) == (F.CANCELLED, OrderStatus.CANCELLED)
    assert uow.books.stock("ATTA-5KG") == stock
    assert [e.amount for e in uow.books.entries(EntryType.ORDER_REVERSAL)] == [order.total]
    assert sorted(uow.books.notifications) == ["notify:1:cancelled", "notify:1:confirmed"]


async def test_a_paid_order_is_not_cancelled() -> None:
    uow = FakeUnitOfWork()
    order_id = await placed(uow)
    async with uow:
        await uow.ordering.set_order_status(order_id, PLACED, OrderStatus.PAID, NOW)
        await uow.commit()

    with pytest.raises(RefundFirst):
        await services.transition(uow, order_id, Action.CANCEL, "asha", NOW)
    assert uow.books.orders[order_id].fulfilment is F.PLACED
    assert not uow.books.entries(EntryType.ORDER_REVERSAL)


async def test_a_meta_customer_is_notified_at_the_bare_number_meta_sends_to() -> None:
    uow = FakeUnitOfWork()
    uow.books.languages[1] = "hi"
    order_id = await placed(uow, source="meta")

    await services.transition(uow, order_id, Action.CONFIRM, "asha", NOW)

    (note,) = uow.books.notifications.values()
    assert (note.provider, note.recipient, note.language) == ("meta", "910000000001", "hi")


async def test_the_customers_cancel_is_a_transition_without_a_notification() -> None:
    uow = FakeUnitOfWork()
    order_id = await placed(uow)
    message = InboundMessage("twilio", "SM2", ALICE, "Alice", "CANCEL ORD-000001")

    outcome = await services.receive_message(uow, message, NOW)

    order = uow.books.orders[order_id]
    assert outcome.reply == replies.order_cancelled(order)
    assert order.fulfilment is F.CANCELLED
    assert uow.books.transitions == {(order_id, F.CANCELLED): (F.PLACED, "customer")}
    assert not uow.books.notifications


async def test_the_customer_cannot_cancel_once_dispatched() -> None:
    uow = FakeUnitOfWork()
    order_id = await placed(uow)
    for action in (Action.CONFIRM, Action.PACK, Action.DISPATCH):
        await services.transition(uow, order_id, action, "asha", NOW)
    message = InboundMessage("twilio", "SM2", ALICE, "Alice", "CANCEL ORD-000001")

    outcome = await services.receive_message(uow, message, NOW)

    assert outcome.reply == "Order ORD-000001 is dispatched and can no longer be cancelled."
    order = uow.books.orders[order_id]
    assert (order.fulfilment, order.status) == (F.DISPATCHED, OrderStatus.PLACED)
    assert not uow.books.entries(EntryType.ORDER_REVERSAL)
