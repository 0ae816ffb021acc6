"""The Twilio sender: notifications and replies through the twilio SDK to a fake Twilio on
127.0.0.1, once each; retries with backoff; refusals failed or held; consent and the 24-hour
window decided at send time; and Twilio's status callbacks for our messages tied to their row.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import serving
from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, SERVER_ERROR, WHATSAPP_FROM, Failure, FakeTwilio
from outbox_support import (
    PARAMS,
    TEMPLATES,
    consent_ledger,
    customer,
    opted_out_at,
    queue,
    row,
)
from support import (
    INBOUND_PATH,
    PUBLIC_URL,
    STATUS_PATH,
    TWILIO_TOKEN,
    encode,
    free_port,
    inbound_form,
    signed_headers,
    status_form,
)
from whatsorder.clock import as_utc, utcnow
from whatsorder.db.consent import ConsentChange, ConsentRepository
from whatsorder.db.engine import open_database
from whatsorder.db.outbox import OutboxRepository
from whatsorder.db.tables import message_statuses, orders, outbox_messages
from whatsorder.outbound.templates import parse_templates
from whatsorder.outbox import ChannelSender, RetryPolicy
from whatsorder.providers.twilio_outbound import TwilioChannel

CUSTOMER = "whatsapp:+919876543210"
DISPATCHED = "Your order ORD-000042 is on its way."
STATUS_CALLBACK = PUBLIC_URL + STATUS_PATH
EXAMPLE_TEMPLATES = Path(__file__).parents[1] / "deploy" / "notification-templates.example.json"


def held_count() -> float:
    """``whatsorder_outbox_sends_total{outcome="held"}`` as this process counts it."""
    return REGISTRY.get_sample_value("whatsorder_outbox_sends_total", {"outcome": "held"}) or 0.0


@pytest.fixture
def twilio() -> Iterator[tuple[FakeTwilio, str]]:
    """A fake Twilio served on 127.0.0.1, and its base URL."""
    fake = FakeTwilio()
    with serving(fake.app) as base_url:
        yield fake, base_url


def channel(base_url: str, account_sid: str | None = ACCOUNT_SID) -> TwilioChannel:
    return TwilioChannel(
        account_sid, AUTH_TOKEN, WHATSAPP_FROM, status_callback=STATUS_CALLBACK, api_url=base_url
    )


@pytest.fixture
async def sender(db: AsyncEngine, twilio: tuple[FakeTwilio, str]) -> AsyncIterator[ChannelSender]:
    async with ChannelSender(
        db,
        channel(twilio[1]),
        templates=parse_templates(TEMPLATES),
        retry=RetryPolicy(first_delay=timedelta(seconds=5), max_attempts=4),
    ) as made:
        yield made


async def test_a_notification_goes_through_the_sdk_to_twilio_once(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], sender: ChannelSender
) -> None:
    fake, _ = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow() - timedelta(hours=1))
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)

    assert await sender.send_due() == 1
    assert await sender.send_due() == 0

    [send] = fake.sends
    assert send.account_sid == ACCOUNT_SID
    assert send.authorization == (ACCOUNT_SID, AUTH_TOKEN)
    assert send.fields == {
        "To": CUSTOMER,
        "From": WHATSAPP_FROM,
        "Body": DISPATCHED,
        "StatusCallback": STATUS_CALLBACK,
    }
    sent = await row(db, key)
    assert (sent["status"], sent["sent_as"], sent["sends"], sent["attempts"]) == (
        "sent",
        "text",
        1,
        1,
    )
    assert sent["provider_message_id"] == fake.sids[0]


async def test_a_twilio_500_is_retried_with_backoff_then_delivered_once(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], sender: ChannelSender
) -> None:
    fake, _ = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow())
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    fake.failures = [SERVER_ERROR, SERVER_ERROR]
    now = utcnow()

    assert await sender.send_due(now) == 0
    waiting = await row(db, key)
    assert (waiting["status"], waiting["attempts"]) == ("pending", 1)
    assert as_utc(waiting["next_attempt_at"]) == now + timedelta(seconds=5)
    assert waiting["last_error"] == "HTTP 500 (20500: Internal Server Error)"

    assert await sender.send_due(now + timedelta(seconds=4)) == 0  # not due yet
    assert len(fake.sends) == 1
    assert await sender.send_due(now + timedelta(seconds=5)) == 0
    assert as_utc((await row(db, key))["next_attempt_at"]) == now + timedelta(seconds=15)
    assert await sender.send_due(now + timedelta(seconds=15)) == 1
    assert await sender.send_due(now + timedelta(hours=1)) == 0

    sent = await row(db, key)
    assert (sent["status"], sent["attempts"], sent["sends"], sent["last_error"]) == (
        "sent",
        3,
        1,
        None,
    )
    assert [send.body for send in fake.delivered] == [DISPATCHED]


async def test_a_twilio_400_fails_for_good_with_twilios_own_message(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], sender: ChannelSender
) -> None:
    fake, _ = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow())
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    fake.failures = [Failure(400, 21211, "Invalid 'To' Phone Number: +91987XXXX")]
    now = utcnow()
    for hour in range(3):
        await sender.send_due(now + timedelta(hours=hour))

    failed = await row(db, key)
    assert (failed["status"], failed["attempts"], failed["sends"]) == ("failed", 1, 0)
    assert failed["last_error"].startswith("HTTP 400 (21211: Invalid 'To' Phone Number")
    assert len(fake.sends) == 1
    assert fake.delivered == []


async def test_outside_the_window_twilio_gets_the_content_template_in_the_customers_language(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], sender: ChannelSender
) -> None:
    fake, _ = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow() - timedelta(days=2))
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, language="hi", params=PARAMS)

    assert await sender.send_due() == 1

    [send] = fake.delivered
    assert "Body" not in send.fields
    assert send.fields["ContentSid"] == "HX" + "b" * 32
    assert json.loads(send.fields["ContentVariables"]) == {"1": "ORD-000042", "2": "₹690.00"}
    assert (await row(db, key))["sent_as"] == "template"


async def test_a_notification_with_no_template_is_held_with_the_reason_and_never_sent(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], sender: ChannelSender
) -> None:
    fake, _ = twilio
    await customer(db, CUSTOMER, last_inbound_at=None)
    key = await queue(db, "twilio", CUSTOMER, "Packed.", event="packed", language="hi")
    held_before = held_count()

    assert await sender.send_due() == 0
    assert held_count() == held_before + 1
    assert await sender.send_due(utcnow() + timedelta(days=1)) == 0

    held = await row(db, key)
    assert (held["status"], held["attempts"], held["sends"], held["sent_as"]) == (
        "held",
        0,
        0,
        None,
    )
    assert held["held_reason"] == (
        "no approved template for 'packed' in 'hi' or 'en': "
        "add one to WHATSORDER_NOTIFICATION_TEMPLATES"
    )
    assert fake.sends == []
    assert (await sender.publish_backlog()).pending == 0  # held is not waiting


async def test_a_customer_who_said_stop_gets_replies_but_no_notifications_until_start(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], sender: ChannelSender
) -> None:
    fake, _ = twilio
    retailer_id = await customer(db, CUSTOMER, last_inbound_at=utcnow())
    stopped_at = utcnow().replace(microsecond=0)
    async with db.begin() as connection:
        await ConsentRepository(connection).record(
            retailer_id, ConsentChange.STOP, "twilio", "SMstop", stopped_at, utcnow()
        )
    stale = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    reply = await queue(db, "twilio", CUSTOMER, "Order ORD-000043 placed", proactive=False)

    assert await sender.send_due() == 1

    assert [send.body for send in fake.delivered] == ["Order ORD-000043 placed"]
    assert (await row(db, reply))["status"] == "sent"
    held = await row(db, stale)
    assert held["status"] == "held"
    assert held["held_reason"] == (
        f"the customer opted out (STOP) at {stopped_at:%Y-%m-%d %H:%M} UTC"
    )

    async with db.begin() as connection:
        await ConsentRepository(connection).record(
            retailer_id, ConsentChange.START, "twilio", "SMstart", utcnow(), utcnow()
        )
    fresh = await queue(db, "twilio", CUSTOMER, "Delivered.", event="delivered")
    assert await sender.send_due() == 1

    assert [send.body for send in fake.delivered] == ["Order ORD-000043 placed", "Delivered."]
    assert (await row(db, stale))["status"] == "held"  # stale news stays unsent
    assert (await row(db, fresh))["status"] == "sent"


async def test_twilios_unsubscribed_refusal_records_a_stop_once_and_holds(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], sender: ChannelSender
) -> None:
    fake, _ = twilio
    retailer_id = await customer(db, CUSTOMER, last_inbound_at=utcnow())
    refused = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    fake.failures = [Failure(400, 21610, "Attempt to send to unsubscribed recipient")]

    assert await sender.send_due() == 0
    later = await queue(db, "twilio", CUSTOMER, "Delivered.", event="delivered")
    assert await sender.send_due(utcnow() + timedelta(hours=1)) == 0

    held = await row(db, refused)
    assert (held["status"], held["attempts"]) == ("held", 1)
    assert held["held_reason"].startswith("the provider says the customer opted out: HTTP 400")
    [stop] = await consent_ledger(db, retailer_id)
    assert (stop["change"], stop["source"], stop["source_ref"]) == (
        "stop",
        "twilio_send_error",
        refused,
    )
    assert await opted_out_at(db, retailer_id) is not None
    assert (await row(db, later))["held_reason"].startswith("the customer opted out (STOP)")
    assert len(fake.sends) == 1


async def test_without_twilio_credentials_nothing_is_sent_and_the_backlog_still_counts(
    db: AsyncEngine, twilio: tuple[FakeTwilio, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, base_url = twilio
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    async with ChannelSender(db, channel(base_url, account_sid=None)) as unconfigured:
        with caplog.at_level(logging.WARNING, logger="whatsorder.outbox"):
            assert await unconfigured.send_due() == 0
            assert await unconfigured.send_due() == 0
        assert (await unconfigured.publish_backlog()).pending == 1

    assert fake.sends == []
    waiting = await row(db, key)
    assert (waiting["status"], waiting["attempts"]) == ("pending", 0)
    assert [record.getMessage() for record in caplog.records] == [
        "Outbox not sent: Twilio sending is not configured: set WHATSORDER_TWILIO_ACCOUNT_SID"
    ]


async def test_twilios_status_callbacks_for_our_message_reach_its_outbox_row(
    db: AsyncEngine,
    twilio: tuple[FakeTwilio, str],
    sender: ChannelSender,
    client: httpx.AsyncClient,
) -> None:
    fake, _ = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow())
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    assert await sender.send_due() == 1
    [send] = fake.delivered
    sid = fake.sids[0]

    # What Twilio posts to the StatusCallback it was given, signed for that URL.
    assert send.fields["StatusCallback"] == PUBLIC_URL + STATUS_PATH
    for status in ("queued", "sent", "delivered", "read"):
        pairs = status_form(sid, status)
        response = await client.post(
            STATUS_PATH, content=encode(pairs), headers=signed_headers(STATUS_PATH, pairs)
        )
        assert response.status_code == 200, response.text

    async with db.connect() as connection:
        joined = (
            await connection.execute(
                select(outbox_messages.c.idempotency_key, message_statuses.c.status).join(
                    message_statuses,
                    (message_statuses.c.provider == outbox_messages.c.provider)
                    & (message_statuses.c.message_id == outbox_messages.c.provider_message_id),
                )
            )
        ).all()
    assert [tuple(found) for found in joined] == [(key, "read")]


async def test_two_twilio_senders_at_once_send_each_row_once(
    database_url: str, db: AsyncEngine, twilio: tuple[FakeTwilio, str]
) -> None:
    fake, base_url = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow())
    bodies = [f"Notification {number}" for number in range(12)]
    keys = [await queue(db, "twilio", CUSTOMER, body, event="confirmed") for body in bodies]
    engines = [open_database(database_url) for _ in range(2)]
    senders = [ChannelSender(engine, channel(base_url), batch_size=3) for engine in engines]
    stop = asyncio.Event()
    running = [asyncio.create_task(one.run(stop, interval=0.02)) for one in senders]
    try:
        async with asyncio.timeout(30):
            while len(fake.delivered) < len(bodies):  # noqa: ASYNC110 (the server's thread)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # a second send of a row would show now
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), timeout=15)
        for engine in engines:
            await engine.dispose()

    assert Counter(send.body for send in fake.sends) == Counter(bodies)
    rows: list[dict[str, Any]] = [await row(db, key) for key in keys]
    assert [(found["status"], found["sends"]) for found in rows] == [("sent", 1)] * len(keys)


async def test_an_acceptance_whose_record_fails_once_is_recorded_on_the_next_try(
    db: AsyncEngine,
    twilio: tuple[FakeTwilio, str],
    sender: ChannelSender,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, _ = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow())
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    mark_sent = OutboxRepository.mark_sent
    failures = [ConnectionError("the database went away after Twilio accepted")]

    async def mark_sent_failing_once(self: OutboxRepository, *args: Any) -> bool:
        if failures:
            raise failures.pop()
        return await mark_sent(self, *args)

    monkeypatch.setattr(OutboxRepository, "mark_sent", mark_sent_failing_once)
    assert await sender.send_due() == 1
    assert await sender.send_due(utcnow() + timedelta(hours=1)) == 0

    sent = await row(db, key)
    assert (sent["status"], sent["sends"], sent["provider_message_id"]) == (
        "sent",
        1,
        fake.sids[0],
    )
    assert len(fake.sends) == 1  # not sent again: no duplicate from the database's hiccup


async def test_an_unreachable_twilio_is_retried_later_and_nothing_is_lost(
    db: AsyncEngine,
) -> None:
    await customer(db, CUSTOMER, last_inbound_at=utcnow())
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params=PARAMS)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with ChannelSender(db, channel(nowhere)) as unreachable:
        assert await unreachable.send_due() == 0

    waiting = await row(db, key)
    assert (waiting["status"], waiting["attempts"], waiting["sends"]) == ("pending", 1, 0)
    assert waiting["last_error"].startswith("ClientConnectorError")
    assert as_utc(waiting["next_attempt_at"]) > utcnow()


async def test_the_service_starts_a_twilio_sender_from_its_settings(
    app_factory: Callable[..., FastAPI], db: AsyncEngine, twilio: tuple[FakeTwilio, str]
) -> None:
    fake, base_url = twilio
    await customer(db, CUSTOMER, last_inbound_at=utcnow() - timedelta(days=3))
    key = await queue(db, "twilio", CUSTOMER, DISPATCHED, params={"order_number": "ORD-7"})
    app = app_factory(
        twilio_account_sid=ACCOUNT_SID,
        twilio_whatsapp_from=WHATSAPP_FROM,
        twilio_api_url=base_url,
        notification_templates=str(EXAMPLE_TEMPLATES),
    )
    async with app.router.lifespan_context(app), asyncio.timeout(15):
        while not fake.delivered:  # noqa: ASYNC110 (set from the server's thread)
            await asyncio.sleep(0.02)

    [send] = fake.delivered
    assert send.authorization == (ACCOUNT_SID, TWILIO_TOKEN)
    assert send.fields["StatusCallback"] == PUBLIC_URL + STATUS_PATH
    assert send.fields["ContentSid"] == "HX00000000000000000000000000000003"  # the example's
    assert json.loads(send.fields["ContentVariables"]) == {"1": "ORD-7"}
    assert (await row(db, key))["status"] == "sent"


async def test_a_notification_finds_its_customer_through_its_order(
    client: httpx.AsyncClient,
    db: AsyncEngine,
    twilio: tuple[FakeTwilio, str],
    sender: ChannelSender,
) -> None:
    fake, _ = twilio
    pairs = inbound_form("ORDER 1 x ATTA-5KG")  # from CUSTOMER, through the front door
    response = await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    assert response.status_code == 200, response.text
    async with db.connect() as connection:
        [order_id] = (await connection.scalars(select(orders.c.id))).all()
    await customer(db, CUSTOMER, last_inbound_at=utcnow() - timedelta(hours=1))
    # The recipient spelled without the channel prefix: only the order leads to the customer.
    key = await queue(db, "twilio", "+919876543210", DISPATCHED, order_id=order_id)

    assert await sender.send_due() == 1

    [send] = fake.delivered
    assert (send.fields["To"], send.fields["Body"]) == (CUSTOMER, DISPATCHED)  # in the window
    assert (await row(db, key))["sent_as"] == "text"
