"""The customer's language, last message and consent, on the grammar and the service layer
over an in-memory unit of work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fake_uow import FakeUnitOfWork
from whatsorder.ordering import replies, services
from whatsorder.ordering.customer import ConsentChange
from whatsorder.ordering.grammar import (
    CancelOrder,
    ChangeConsent,
    ChooseLanguage,
    ShowHelp,
    Unreadable,
    parse_message,
)
from whatsorder.ordering.model import InboundMessage

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
ALICE = "whatsapp:+910000000001"


def message(text: str, message_id: str = "SM1", sent_at: datetime | None = None) -> InboundMessage:
    return InboundMessage("twilio", message_id, ALICE, "Alice", text, sent_at)


async def say(
    uow: FakeUnitOfWork,
    text: str,
    message_id: str = "SM1",
    sent_at: datetime | None = None,
    now: datetime = NOW,
) -> str:
    outcome = await services.receive_message(uow, message(text, message_id, sent_at), now)
    return outcome.reply


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("LANGUAGE HI", "hi"),
        ("language hi", "hi"),
        ("  Language    Hindi  ", "hi"),
        ("LANGUAGE: HI", "hi"),
        ("भाषा हिंदी", "hi"),
        ("भाषा हिन्दी", "hi"),
        ("भाषा HI", "hi"),
        ("LANGUAGE EN", "en"),
        ("language English", "en"),
        ("भाषा अंग्रेज़ी", "en"),
        ("भाषा अंग्रे\u095bी", "en"),  # ज़ as one precomposed character: the same word
        ("भाषा अंग्रेजी", "en"),
        ("भाषा English", "en"),
    ],
)
def test_the_language_command_is_read_in_either_script_and_any_case_or_spacing(
    text: str, language: str
) -> None:
    assert parse_message(text) == ChooseLanguage(language, text.split(maxsplit=1)[1].strip(" :"))


@pytest.mark.parametrize("text", ["LANGUAGE French", "भाषा தமிழ்", "LANGUAGE"])
def test_a_language_we_do_not_have_is_named_and_not_chosen(text: str) -> None:
    command = parse_message(text)
    assert isinstance(command, ChooseLanguage)
    assert command.language is None


@pytest.mark.parametrize(
    ("text", "change"),
    [
        ("STOP", ConsentChange.STOP),
        (" stop ", ConsentChange.STOP),
        ("Stop!", ConsentChange.STOP),
        ("STOPALL", ConsentChange.STOP),
        ("unsubscribe", ConsentChange.STOP),
        ("END", ConsentChange.STOP),
        ("Quit", ConsentChange.STOP),
        ("START", ConsentChange.START),
        ("unstop", ConsentChange.START),
    ],
)
def test_consent_words_are_the_whole_message(text: str, change: ConsentChange) -> None:
    assert parse_message(text) == ChangeConsent(change)


def test_cancel_yes_and_a_sentence_with_stop_are_not_consent() -> None:
    assert isinstance(parse_message("CANCEL"), Unreadable)  # which order?
    assert parse_message("CANCEL ORD-000001") == CancelOrder("ORD-000001")
    assert isinstance(parse_message("YES"), ShowHelp)
    assert isinstance(parse_message("stop sending atta"), ShowHelp)


async def test_a_hindi_speaking_customer_is_answered_in_hindi_until_they_choose_english() -> None:
    uow = FakeUnitOfWork()
    assert await say(uow, "LANGUAGE HI", "SM1") == replies.language_chosen("hi")
    assert uow.books.customers.languages == {1: "hi"}

    menu = await say(uow, "MENU", "SM2")
    assert menu.startswith("हमारी सूची:\nATTA-5KG: ")
    placed = await say(uow, "ORDER 2 x ATTA-5KG", "SM3")
    assert placed == replies.order_placed(uow.books.orders[1], "hi")
    assert placed.startswith("ऑर्डर ORD-000001 दर्ज हो गया:")
    status = await say(uow, "STATUS", "SM4")
    assert status.startswith("ऑर्डर ORD-000001 की स्थिति: दर्ज")
    assert await say(uow, "HELP", "SM5") == replies.said(replies.HELP, "hi")
    rejected = await say(uow, "ORDER 2 x RICE-9KG", "SM6")
    assert rejected.startswith("हम आपका ऑर्डर दर्ज नहीं कर सके: RICE-9KG हमारी सूची में नहीं है।")
    unreadable = await say(uow, "STATUS ORD-XYZ", "SM7")
    assert "कोई ऑर्डर नंबर नहीं है" in unreadable
    cancelled = await say(uow, "CANCEL ORD-000001", "SM8")
    assert cancelled.startswith("ऑर्डर ORD-000001 रद्द कर दिया गया है।")

    assert await say(uow, "LANGUAGE EN", "SM9") == replies.language_chosen("en")
    assert (await say(uow, "MENU", "SM10")).startswith("Our catalogue:\n")


async def test_an_unknown_language_gets_the_choices_in_the_current_language() -> None:
    uow = FakeUnitOfWork()
    reply = await say(uow, "LANGUAGE French", "SM1")
    assert reply == (
        'We have no replies in "French". To choose a language, send one of: '
        "LANGUAGE EN (English), LANGUAGE HI (हिंदी)."
    )
    assert uow.books.customers.languages == {}
    await say(uow, "भाषा हिंदी", "SM2")
    assert (await say(uow, "LANGUAGE Tamil", "SM3")).startswith('"Tamil" में हमारे जवाब')


async def test_stop_is_recorded_once_per_message_and_start_clears_it() -> None:
    uow = FakeUnitOfWork()
    assert await say(uow, "STOP", "SM1") == replies.said(replies.STOPPED)
    assert await say(uow, "STOP", "SM1") == replies.said(replies.STOPPED)  # a retry
    assert list(uow.books.customers.consent_events) == [("twilio", "SM1")]
    assert 1 in uow.books.customers.opted_out

    assert await say(uow, "START", "SM2") == replies.said(replies.STARTED)
    assert uow.books.customers.opted_out == {}
    assert len(uow.books.customers.consent_events) == 2


async def test_a_stop_that_arrives_after_a_later_start_does_not_stop_anything() -> None:
    uow = FakeUnitOfWork()
    await say(uow, "START", "wamid.2", sent_at=NOW - timedelta(minutes=1))
    late = await say(uow, "STOP", "wamid.1", sent_at=NOW - timedelta(minutes=2))
    assert late == replies.said(replies.STARTED)  # where consent stands: still started
    assert uow.books.customers.opted_out == {}
    assert len(uow.books.customers.consent_events) == 2  # the ledger keeps both


async def test_the_stop_confirmation_is_in_the_customer_s_language() -> None:
    uow = FakeUnitOfWork()
    await say(uow, "भाषा हिंदी", "SM1")
    assert (await say(uow, "STOP", "SM2")).startswith("अब आपको WhatsApp पर हमारी ओर से")


async def test_the_last_message_only_moves_forward_and_never_past_now() -> None:
    uow = FakeUnitOfWork()
    await say(uow, "HELP", "wamid.2", sent_at=NOW - timedelta(minutes=5))
    await say(uow, "HELP", "wamid.1", sent_at=NOW - timedelta(hours=3))  # a late retry
    assert uow.books.customers.last_inbound == {1: NOW - timedelta(minutes=5)}
    await say(uow, "HELP", "wamid.3", sent_at=NOW + timedelta(days=1))  # a clock ahead
    assert uow.books.customers.last_inbound == {1: NOW}
    await say(uow, "HELP", "SM4", now=NOW + timedelta(minutes=1))  # Twilio: no time given
    assert uow.books.customers.last_inbound == {1: NOW + timedelta(minutes=1)}


async def test_a_meta_preference_is_recorded_once_and_is_no_message() -> None:
    uow = FakeUnitOfWork()
    at = NOW - timedelta(minutes=1)
    for _ in range(2):
        await services.record_preference(
            uow, ALICE, "Alice", ConsentChange.STOP, "910000000001:stop:1", at, "detail", NOW
        )
    assert list(uow.books.customers.consent_events) == [
        (services.META_PREFERENCES, "910000000001:stop:1")
    ]
    assert 1 in uow.books.customers.opted_out
    assert uow.books.customers.last_inbound == {}
