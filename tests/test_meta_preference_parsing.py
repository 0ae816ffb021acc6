"""Reading what a signed Meta delivery says about consent and time: the user_preferences
field (Meta's reference payload, tests/fixtures/meta_user_preferences.json) and a message's
timestamp. Whatever a field holds, parsing refuses a part or reads it, and never raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from support import fixture_text, meta_delivery, meta_text_message
from whatsorder.providers import meta


def preferences_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(fixture_text("meta_user_preferences.json"))
    return document


def preference_of(document: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = document["entry"][0]["changes"][0]["value"]["user_preferences"][0]
    return item


def test_meta_s_reference_payload_reads_as_a_stop_of_that_customer() -> None:
    delivery = meta.parse_delivery(fixture_text("meta_user_preferences.json").encode())
    assert (delivery.messages, delivery.statuses, delivery.rejected) == ((), (), ())
    (preference,) = delivery.preferences
    assert preference.sender == "whatsapp:+16505551234"
    assert preference.profile_name == "Sheena Nelson"
    assert preference.stops
    assert preference.occurred_at == datetime(2024, 11, 15, 21, 22, 1, tzinfo=UTC)
    assert preference.reference == "16505551234:stop:1731705721"
    assert preference.detail == "User requested to stop marketing messages"
    assert "16505551234" not in preference.key  # keys are shown to operators


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"value": "maybe"}, "A user preference of an unknown value: 'maybe'."),
        ({"category": "offers"}, "A user preference of an unknown category: 'offers'."),
        ({"timestamp": None}, "A user preference has no usable timestamp."),
        ({"timestamp": "9" * 5000}, "A user preference has no usable timestamp."),
        ({"timestamp": -5}, "A user preference has no usable timestamp."),
        ({"wa_id": 16505551234}, "A user preference names no wa_id."),
        ({"wa_id": "1650 555"}, "A user preference's wa_id is unusable"),
        ({"wa_id": "1" * 60}, "A user preference's wa_id is over 54 characters."),
    ],
)
def test_a_preference_that_cannot_be_read_whole_is_refused_with_a_reason(
    change: dict[str, Any], reason: str
) -> None:
    document = preferences_document()
    preference_of(document).update(change)
    delivery = meta.parse_delivery(json.dumps(document).encode())
    assert delivery.preferences == ()
    (rejected,) = delivery.rejected
    assert rejected.reason.startswith(reason)


def test_user_preferences_that_is_not_a_list_is_refused() -> None:
    document = preferences_document()
    document["entry"][0]["changes"][0]["value"]["user_preferences"] = {"wa_id": "1"}
    delivery = meta.parse_delivery(json.dumps(document).encode())
    assert [rejected.reason for rejected in delivery.rejected] == [
        "user_preferences is not a list."
    ]


@pytest.mark.parametrize(
    ("timestamp", "sent_at"),
    [
        ("1749416383", datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)),
        (1749416383, datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)),
        (None, None),
        ("soon", None),
        ("9" * 5000, None),
        (0, None),
    ],
)
def test_a_message_s_timestamp_is_when_it_was_sent_or_nothing(
    timestamp: object, sent_at: datetime | None
) -> None:
    message = meta_text_message("HELP")
    message["timestamp"] = timestamp
    (parsed,) = meta.parse_delivery(meta_delivery([message])).messages
    assert parsed.inbound().sent_at == sent_at


def test_a_cart_quantity_of_thousands_of_digits_is_refused_not_raised() -> None:
    document: dict[str, Any] = json.loads(fixture_text("meta_order.json"))
    message = document["entry"][0]["changes"][0]["value"]["messages"][0]
    message["order"]["product_items"][0]["quantity"] = "9" * 5000
    delivery = meta.parse_delivery(json.dumps(document).encode())
    assert delivery.messages == ()
    assert "without a whole quantity" in delivery.rejected[0].reason
