"""Replies to the outbox and dead letters: each kept once per key, with what they answer."""

from __future__ import annotations

from datetime import UTC, datetime

from fake_uow import FakeUnitOfWork, QueuedReply
from whatsorder.ordering import services

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TO = "919876543210"


async def test_a_reply_in_parts_is_queued_under_one_key_per_part() -> None:
    uow = FakeUnitOfWork()

    added = await services.queue_reply(uow, "meta", TO, ["one", "two", "three"], "reply:w1", NOW)

    assert added == 3
    assert uow.books.outbox == {
        "reply:w1": QueuedReply("meta", TO, "one"),
        "reply:w1:2": QueuedReply("meta", TO, "two"),
        "reply:w1:3": QueuedReply("meta", TO, "three"),
    }


async def test_a_reply_queued_again_adds_nothing() -> None:
    uow = FakeUnitOfWork()
    await services.queue_reply(uow, "meta", TO, ["first"], "reply:w1", NOW)

    added = await services.queue_reply(uow, "meta", TO, ["changed"], "reply:w1", NOW)

    assert added == 0
    assert uow.books.outbox == {"reply:w1": QueuedReply("meta", TO, "first")}


async def test_a_dead_letter_is_kept_once_per_provider_and_key() -> None:
    uow = FakeUnitOfWork()

    first = await services.keep_dead_letter(uow, "meta", "abc", "unreadable", "{}", NOW)
    again = await services.keep_dead_letter(uow, "meta", "abc", "other reason", "{ }", NOW)
    other = await services.keep_dead_letter(uow, "twilio", "abc", "unreadable", "{}", NOW)

    assert (first, again, other) == (True, False, True)
    assert uow.books.dead_letters[("meta", "abc")] == ("unreadable", "{}")


async def test_nothing_a_unit_of_work_wrote_stays_unless_it_commits() -> None:
    uow = FakeUnitOfWork()

    async with uow:
        await uow.outbox.enqueue("meta", TO, "lost", "reply:w1", NOW)
        await uow.dead_letters.add("meta", "abc", "lost", "{}", NOW)
    async with uow:
        await uow.ordering.register_retailer(TO, "kept", NOW)
        await uow.commit()

    assert (uow.books.outbox, uow.books.dead_letters) == ({}, {})
    assert list(uow.books.retailers) == [TO]
