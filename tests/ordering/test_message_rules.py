"""The rules of a customer's message, on the service layer over an in-memory unit of work."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fake_uow import Books, FakeUnitOfWork, InMemoryOrdering
from whatsorder.ordering import replies, services
from whatsorder.ordering.model import EntryType, InboundMessage, OrderStatus, RequestedLine

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = "whatsapp:+910000000001"
BOB = "whatsapp:+910000000002"


def message(text: str, message_id: str = "SM1", sender: str = ALICE) -> InboundMessage:
    return InboundMessage("twilio", message_id, sender, "Alice", text)


async def say(
    uow: FakeUnitOfWork, text: str, message_id: str = "SM1", sender: str = ALICE
) -> services.MessageOutcome:
    return await services.receive_message(uow, message(text, message_id, sender), NOW)


async def test_an_order_takes_its_stock_debits_the_account_and_is_confirmed() -> None:
    uow = FakeUnitOfWork()
    before = uow.books.stock("ATTA-5KG")

    outcome = await say(uow, "ORDER 2 x ATTA-5KG, 1 TOOR-1KG")

    assert (outcome.created, outcome.order_id) == (True, 1)
    order = uow.books.orders[1]
    assert outcome.reply == replies.order_placed(order)
    assert (order.status, order.total) == (OrderStatus.PLACED, 2 * 26_500 + 16_000)
    assert uow.books.stock("ATTA-5KG") == before - 2
    assert uow.books.balance(outcome.retailer_id) == -order.total


async def test_a_message_places_its_order_once_however_often_it_comes() -> None:
    uow = FakeUnitOfWork()
    first = await say(uow, "ORDER 1 x OIL-1L")
    again = await say(uow, "ORDER 1 x OIL-1L")

    assert (again.order_id, again.reply, again.created) == (first.order_id, first.reply, False)
    assert len(uow.books.orders) == 1
    assert len(uow.books.entries(EntryType.ORDER_DEBIT)) == 1


async def test_a_message_id_of_another_sender_is_refused_and_shows_nothing() -> None:
    uow = FakeUnitOfWork()
    await say(uow, "ORDER 1 x OIL-1L", sender=ALICE)

    outcome = await say(uow, "ORDER 1 x OIL-1L", sender=BOB)

    assert (outcome.refused, outcome.order_id) == (True, None)
    assert outcome.reply == replies.MESSAGE_ID_TAKEN


async def test_an_order_short_of_stock_is_rejected_and_takes_nothing() -> None:
    uow = FakeUnitOfWork()
    stock = uow.books.stock("RICE-5KG")

    outcome = await say(uow, f"ORDER {stock + 1} x RICE-5KG")

    assert (outcome.order_id, outcome.created) == (None, False)
    assert f"only {stock} in stock" in outcome.reply
    assert uow.books.stock("RICE-5KG") == stock
    assert (uow.books.orders, uow.books.ledger) == ({}, [])


async def test_stock_taken_by_another_order_meanwhile_rejects_the_whole_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uow = FakeUnitOfWork()
    stock = {sku: uow.books.stock(sku) for sku in ("ATTA-5KG", "TOOR-1KG")}
    real_take_stock = InMemoryOrdering.take_stock

    async def toor_gone(self: InMemoryOrdering, product_id: int, quantity: int) -> bool:
        if product_id == 2:  # TOOR-1KG, taken after this order read the catalogue
            return False
        return await real_take_stock(self, product_id, quantity)

    monkeypatch.setattr(InMemoryOrdering, "take_stock", toor_gone)
    outcome = await say(uow, "ORDER 1 x ATTA-5KG, 1 x TOOR-1KG")

    assert outcome.reply == replies.order_rejected("TOOR-1KG: not enough left in stock.")
    assert {sku: uow.books.stock(sku) for sku in stock} == stock  # ATTA's went back too
    assert uow.books.orders == {}


async def test_a_copy_that_lost_the_last_stock_to_its_own_order_answers_with_that_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two copies of one message under different keys: the first takes the last units and
    commits while the second waits on the product row; the second finds no stock left — for
    the order its own message placed — and must answer with that order, not "out of stock"."""
    uow = FakeUnitOfWork()
    real_take_stock = InMemoryOrdering.take_stock

    async def first_copy_won(self: InMemoryOrdering, product_id: int, quantity: int) -> bool:
        monkeypatch.setattr(InMemoryOrdering, "take_stock", real_take_stock)
        other_copy = FakeUnitOfWork(uow.books)
        assert (await say(other_copy, "ORDER 2 x OIL-1L")).created
        uow.books = other_copy.books  # what the other copy committed while we waited
        return False

    await say(uow, "MENU", message_id="SM0")  # the sender is known: no registration to wait on
    monkeypatch.setattr(InMemoryOrdering, "take_stock", first_copy_won)
    outcome = await say(uow, "ORDER 2 x OIL-1L")

    assert not outcome.created
    assert outcome.reply == replies.order_placed(uow.books.orders[1])
    assert len(uow.books.orders) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ORDER 1 x CAVIAR", "CAVIAR is not in our catalogue"),
        ("ORDER 0 x ATTA-5KG", "quantity must be between 1 and"),
        ("ORDER", "no items"),
    ],
)
async def test_an_unreadable_or_impossible_order_places_nothing(text: str, expected: str) -> None:
    uow = FakeUnitOfWork()

    outcome = await say(uow, text)

    assert expected in outcome.reply
    assert (uow.books.orders, uow.books.ledger) == ({}, [])


async def test_a_catalogue_cart_is_priced_from_our_catalogue() -> None:
    uow = FakeUnitOfWork()
    cart = [RequestedLine("SUGAR-1KG", 3)]

    outcome = await services.place_catalogue_order(uow, message("", "wamid.1"), cart, NOW)

    assert outcome.created
    assert uow.books.orders[1].total == 3 * 4_800


async def test_cancelling_a_placed_order_returns_its_stock_and_reverses_its_debit() -> None:
    uow = FakeUnitOfWork()
    stock = uow.books.stock("ATTA-5KG")
    placed = await say(uow, "ORDER 4 x ATTA-5KG", "SM1")

    cancelled = await say(uow, "CANCEL ORD-000001", "SM2")

    order = uow.books.orders[1]
    assert cancelled.reply == replies.order_cancelled(order)
    assert order.status is OrderStatus.CANCELLED
    assert uow.books.stock("ATTA-5KG") == stock
    assert uow.books.balance(placed.retailer_id) == 0
    assert [e.amount for e in uow.books.entries(EntryType.ORDER_REVERSAL)] == [order.total]


async def test_only_a_placed_order_can_be_cancelled_and_only_once() -> None:
    uow = FakeUnitOfWork()
    await say(uow, "ORDER 1 x OIL-1L", "SM1")
    await say(uow, "CANCEL ORD-000001", "SM2")
    stock = uow.books.stock("OIL-1L")

    again = await say(uow, "CANCEL ORD-000001", "SM3")

    assert again.reply == replies.cannot_cancel(uow.books.orders[1])
    assert uow.books.stock("OIL-1L") == stock
    assert len(uow.books.entries(EntryType.ORDER_REVERSAL)) == 1


async def test_a_paid_order_cannot_be_cancelled() -> None:
    uow = FakeUnitOfWork()
    await say(uow, "ORDER 1 x OIL-1L", "SM1")
    async with uow:
        await uow.ordering.set_order_status(1, OrderStatus.PLACED, OrderStatus.PAID, NOW)
        await uow.commit()

    outcome = await say(uow, "CANCEL ORD-000001", "SM2")

    assert "is paid and can no longer be cancelled" in outcome.reply
    assert uow.books.orders[1].status is OrderStatus.PAID


async def test_nobody_cancels_or_sees_another_retailers_order() -> None:
    uow = FakeUnitOfWork()
    await say(uow, "ORDER 1 x OIL-1L", "SM1", sender=ALICE)

    for text in ("CANCEL ORD-000001", "STATUS ORD-000001"):
        outcome = await say(uow, text, f"SM-{text}", sender=BOB)
        assert outcome.reply == replies.no_such_order("ORD-000001")
    assert uow.books.orders[1].status is OrderStatus.PLACED


async def test_status_without_a_number_shows_the_latest_order() -> None:
    uow = FakeUnitOfWork()
    assert (await say(uow, "STATUS", "SM0")).reply == replies.no_such_order(None)
    await say(uow, "ORDER 1 x OIL-1L", "SM1")
    await say(uow, "ORDER 1 x SUGAR-1KG", "SM2")

    outcome = await say(uow, "STATUS", "SM3")

    assert outcome.order_id == 2
    assert outcome.reply == replies.order_status(uow.books.orders[2])


async def test_menu_and_help_answer_without_writing_anything_but_the_sender() -> None:
    uow = FakeUnitOfWork()

    menu = await say(uow, "MENU", "SM1")
    help_ = await say(uow, "what is this?", "SM2")

    assert "ATTA-5KG" in menu.reply
    assert help_.reply == replies.HELP
    assert (uow.books.orders, uow.books.ledger) == ({}, [])
    assert list(uow.books.retailers) == [ALICE]


async def test_the_sender_is_registered_once_with_a_printable_name() -> None:
    uow = FakeUnitOfWork(Books.with_demo_catalogue())
    inbound = InboundMessage("meta", "wamid.1", ALICE, "\x00Al\x07ice ", "HELP")

    first = await services.receive_message(uow, inbound, NOW)
    second = await say(uow, "HELP", "SM2")

    assert first.retailer_id == second.retailer_id
    assert uow.books.retailer_names[first.retailer_id] == "Alice"
