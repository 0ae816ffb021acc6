"""Meta's WhatsApp Cloud API: every message and status takes effect once, however batched.

Deliveries are the shared fixtures (or built from them), signed over their exact bytes as Meta
signs them, on SQLite and PostgreSQL. Replies go through the outbox to a fake Graph server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import FakeGraph, serving
from support import (
    FIXTURES,
    META_APP_SECRET,
    META_PATH,
    META_SENDER,
    META_VERIFY_TOKEN,
    app_client,
    assert_problem,
    fixture_text,
    meta_delivery,
    meta_headers,
    meta_status,
    meta_text_message,
    new_wamid,
    snapshot,
)
from whatsorder.db import reports
from whatsorder.db.outbox import OutboxRepository
from whatsorder.db.tables import (
    dead_letters,
    message_statuses,
    order_items,
    orders,
    outbox_messages,
    retailers,
    webhook_idempotency,
)
from whatsorder.ordering import replies
from whatsorder.ordering.demo import DEMO_CATALOGUE
from whatsorder.ordering.services import messages as services
from whatsorder.outbox import OutboxSender, RetryPolicy
from whatsorder.providers import meta
from whatsorder.web import meta as meta_routes
from whatsorder.web import meta_statuses
from whatsorder_idempotency import StoreBusy
from whatsorder_idempotency.record import as_utc, utcnow

STOCK = {product.sku: product.stock for product in DEMO_CATALOGUE}
PHONE_NUMBER_ID = "106540352242922"
ACCESS_TOKEN = "test-graph-access-token"
GRAPH = "http://graph.test/v21.0"


def with_meta_routes(app: FastAPI) -> FastAPI:
    """The app with the Meta routes, until create_app includes them itself."""
    if not any(getattr(route, "path", None) == META_PATH for route in app.routes):
        app.include_router(meta_routes.router)
    return app


@pytest.fixture
def meta_app(app_factory: Callable[..., FastAPI]) -> Callable[..., FastAPI]:
    """``meta_app(**settings)``: the app with Meta's secrets configured (unless overridden)."""

    def build(**overrides: Any) -> FastAPI:
        settings = {
            "meta_app_secret": META_APP_SECRET,
            "meta_verify_token": META_VERIFY_TOKEN,
            **overrides,
        }
        return with_meta_routes(app_factory(**settings))

    return build


@pytest.fixture
async def client(meta_app: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(meta_app()) as http:
        yield http


@pytest.fixture
async def graph() -> AsyncIterator[tuple[FakeGraph, httpx.AsyncClient]]:
    """The fake Graph API in process, and an HTTP client that reaches it."""
    fake = FakeGraph()
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://graph.test") as http:
        yield fake, http


def sender_for(db: AsyncEngine, http: httpx.AsyncClient, **options: Any) -> OutboxSender:
    return OutboxSender(db, GRAPH, ACCESS_TOKEN, PHONE_NUMBER_ID, client=http, **options)


async def deliver(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    """POST a delivery signed over exactly these bytes."""
    return await client.post(META_PATH, content=body, headers=meta_headers(body))


async def rows(db: AsyncEngine, table: Any, *where: Any) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        result = await connection.execute(select(table).where(*where).order_by(table.c.id))
        return [dict(row) for row in result.mappings()]


async def count(db: AsyncEngine, table: Any) -> int:
    async with db.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def assert_audit_passes(db: AsyncEngine) -> None:
    async with db.connect() as connection:
        assert await reports.audit(connection) == []


def texts(*bodies: str, sender: str = META_SENDER) -> list[dict[str, Any]]:
    return [meta_text_message(body, sender=sender) for body in bodies]


# The verification handshake


async def test_the_handshake_answers_the_challenge_as_plain_text(
    client: httpx.AsyncClient,
) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": META_VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    response = await client.get(META_PATH, params=params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "1158201444"


@pytest.mark.parametrize(
    ("mode", "token"),
    [
        ("subscribe", "not-the-token"),
        ("unsubscribe", META_VERIFY_TOKEN),
        (None, META_VERIFY_TOKEN),
        ("subscribe", None),
    ],
)
async def test_a_wrong_verify_token_or_mode_is_refused(
    client: httpx.AsyncClient, mode: str | None, token: str | None
) -> None:
    params = {"hub.challenge": "1158201444"}
    if mode is not None:
        params["hub.mode"] = mode
    if token is not None:
        params["hub.verify_token"] = token
    response = await client.get(META_PATH, params=params)
    assert_problem(response, 403, "verification-refused")
    assert "1158201444" not in response.text
    assert META_VERIFY_TOKEN not in response.text


async def test_the_handshake_answers_503_without_a_verify_token(
    meta_app: Callable[..., FastAPI],
) -> None:
    async with app_client(meta_app(meta_verify_token=None)) as client:
        response = await client.get(
            META_PATH,
            params={"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
        )
    assert_problem(response, 503, "provider-not-configured")


# Signatures


@pytest.mark.parametrize(
    ("case", "status", "kind"),
    [
        ("right", 200, None),
        ("wrong secret", 403, "signature-invalid"),
        ("body changed after signing", 403, "signature-invalid"),
        ("re-serialised before signing", 403, "signature-invalid"),
        ("not sha256=", 403, "signature-invalid"),
        ("missing", 401, "signature-missing"),
        ("unconfigured", 503, "provider-not-configured"),
    ],
)
async def test_signatures_are_checked_over_the_raw_bytes_and_refusals_store_nothing(
    meta_app: Callable[..., FastAPI], db: AsyncEngine, case: str, status: int, kind: str | None
) -> None:
    body = fixture_text("meta_text.json").encode()
    headers = meta_headers(body)
    overrides: dict[str, Any] = {}
    if case == "wrong secret":
        headers = meta_headers(body, "another-app-secret")
    elif case == "body changed after signing":
        body = body.replace(b"ATTA-5KG", b"ATTA-5KH")
    elif case == "re-serialised before signing":
        headers = meta_headers(json.dumps(json.loads(body)).encode())
    elif case == "not sha256=":
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"].removeprefix("sha256=")
    elif case == "missing":
        del headers["X-Hub-Signature-256"]
    elif case == "unconfigured":
        overrides["meta_app_secret"] = None

    async with app_client(meta_app(**overrides)) as client:
        response = await client.post(META_PATH, content=body, headers=headers)

    state = await snapshot(db)
    if kind is None:
        assert response.status_code == 200, response.text
        assert response.json() == {"received": 1, "statuses": 0, "dead_lettered": 0}
        assert (state.orders, await count(db, outbox_messages)) == (1, 1)
        return
    assert_problem(response, status, kind)
    assert META_APP_SECRET not in response.text
    assert (state.orders, state.retailers, state.idempotency_records) == (0, 0, 0)
    assert await count(db, outbox_messages) == 0
    assert await count(db, dead_letters) == 0


async def test_a_non_ascii_profile_name_survives_the_signature_check(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    name = "श्री गणेश किराना"
    # Edited as text and signed as these exact bytes: raw UTF-8, never re-serialised.
    body = fixture_text("meta_text.json").replace("Sheena Nelson", name).encode("utf-8")
    assert name.encode("utf-8") in body

    response = await deliver(client, body)

    assert response.status_code == 200, response.text
    [retailer] = await rows(db, retailers)
    assert retailer["name"] == name
    assert retailer["whatsapp_id"] == "whatsapp:+16505551234"  # one identity with Twilio's
    assert (await snapshot(db)).orders == 1


# Orders, once per message however the delivery is batched


async def test_a_catalogue_cart_is_priced_from_our_catalogue_not_the_cart(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    body = (FIXTURES / "meta_order.json").read_bytes()  # cart says ₹30 and ₹35.5

    response = await deliver(client, body)

    assert response.status_code == 200, response.text
    assert response.json() == {"received": 1, "statuses": 0, "dead_lettered": 0}
    [order] = await rows(db, orders)
    assert (order["source"], order["source_message_id"]) == ("meta", "wamid.xyzxyz")
    assert (order["total"], order["currency"]) == (3 * 26_500 + 2 * 16_000, "INR")
    lines = await rows(db, order_items)
    assert [(line["sku"], line["quantity"], line["unit_price"]) for line in lines] == [
        ("ATTA-5KG", 3, 26_500),
        ("TOOR-1KG", 2, 16_000),
    ]
    state = await snapshot(db)
    assert state.stock["ATTA-5KG"] == STOCK["ATTA-5KG"] - 3
    assert state.stock["TOOR-1KG"] == STOCK["TOOR-1KG"] - 2
    [reply] = await rows(db, outbox_messages)
    assert reply["recipient"] == "972987654321"
    assert "₹1,115.00" in reply["body"]
    await assert_audit_passes(db)


def test_a_fractional_item_price_is_parsed_exactly_as_decimal() -> None:
    delivery = meta.parse_delivery((FIXTURES / "meta_order.json").read_bytes())
    [message] = delivery.messages
    assert message.cart == (
        meta.CartItem("ATTA-5KG", 3, Decimal("30"), "INR"),
        meta.CartItem("TOOR-1KG", 2, Decimal("35.5"), "INR"),
    )
    assert (message.wa_id, message.user_id) == ("972987654321", "US.13491208655302741918")
    assert message.key == "wamid.xyzxyz"


@pytest.mark.parametrize("redelivery", ["as it was", "split into three", "merged with a new one"])
async def test_three_orders_in_one_delivery_are_placed_once_however_they_are_redelivered(
    client: httpx.AsyncClient, db: AsyncEngine, redelivery: str
) -> None:
    messages = texts("ORDER 1 x ATTA-5KG", "ORDER 2 x TOOR-1KG", "ORDER 1 x RICE-5KG")
    first = await deliver(client, meta_delivery(messages))
    assert first.status_code == 200, first.text
    assert first.json() == {"received": 3, "statuses": 0, "dead_lettered": 0}
    assert (await snapshot(db)).orders == 3

    if redelivery == "as it was":
        again = [await deliver(client, meta_delivery(messages))]
        expected_orders = 3
    elif redelivery == "split into three":
        again = [await deliver(client, meta_delivery([message])) for message in messages]
        expected_orders = 3
    else:
        new = meta_text_message("ORDER 3 x SUGAR-1KG")
        merged = [messages[2], new, messages[0], messages[1]]
        again = [await deliver(client, meta_delivery(merged, entries=2))]
        expected_orders = 4

    assert all(response.status_code == 200 for response in again)
    state = await snapshot(db)
    assert (state.orders, state.ledger_entries) == (expected_orders, expected_orders)
    assert state.stock["ATTA-5KG"] == STOCK["ATTA-5KG"] - 1
    assert state.stock["TOOR-1KG"] == STOCK["TOOR-1KG"] - 2
    replies_kept = await rows(db, outbox_messages)
    assert len(replies_kept) == expected_orders  # one reply per message, never per delivery
    assert {row["idempotency_key"] for row in replies_kept} >= {
        f"reply:{message['id']}" for message in messages
    }
    await assert_audit_passes(db)


async def test_concurrent_copies_batched_differently_place_each_order_once(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    skus = ["ATTA-5KG", "TOOR-1KG", "RICE-5KG", "OIL-1L", "SUGAR-1KG"]
    messages = texts(*(f"ORDER 1 x {sku}" for sku in skus))
    bodies = [
        meta_delivery(messages),
        meta_delivery(messages[::-1], entries=2),
        *(meta_delivery([message]) for message in messages),
    ]

    responses = await asyncio.gather(*(deliver(client, body) for body in bodies))

    assert [response.status_code for response in responses] == [200] * len(bodies)
    state = await snapshot(db)
    assert (state.orders, state.ledger_entries, state.retailers) == (5, 5, 1)
    assert all(state.stock[sku] == STOCK[sku] - 1 for sku in skus)
    assert await count(db, outbox_messages) == 5
    await assert_audit_passes(db)


async def test_after_the_records_expired_a_redelivery_places_no_second_order(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    messages = texts("ORDER 2 x OIL-1L", "ORDER 1 x SUGAR-1KG")
    await deliver(client, meta_delivery(messages))
    async with db.begin() as connection:
        await connection.execute(
            update(webhook_idempotency).values(expires_at=utcnow() - timedelta(seconds=1))
        )

    again = await deliver(client, meta_delivery(messages))

    assert again.status_code == 200, again.text
    state = await snapshot(db)
    assert (state.orders, state.ledger_entries) == (2, 2)  # the business key held
    assert state.stock["OIL-1L"] == STOCK["OIL-1L"] - 2
    assert await count(db, outbox_messages) == 2
    await assert_audit_passes(db)


async def test_a_contact_without_wa_id_is_identified_by_its_user_id(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    document = json.loads(fixture_text("meta_text.json"))
    value = document["entry"][0]["changes"][0]["value"]
    value["contacts"] = [{"profile": {"name": "Ravi Stores"}, "user_id": "IN.1648738043044942"}]
    del value["messages"][0]["from"]  # no phone number shared

    response = await deliver(client, json.dumps(document).encode())

    assert response.status_code == 200, response.text
    [retailer] = await rows(db, retailers)
    assert (retailer["whatsapp_id"], retailer["name"]) == ("IN.1648738043044942", "Ravi Stores")
    assert (await snapshot(db)).orders == 1
    [reply] = await rows(db, outbox_messages)
    assert reply["recipient"] == "IN.1648738043044942"
    assert meta.send_payload(reply["recipient"], "hi")["recipient"] == "IN.1648738043044942"


async def test_over_the_sender_limit_a_message_gets_a_polite_reply_and_no_order(
    meta_app: Callable[..., FastAPI], db: AsyncEngine
) -> None:
    messages = texts("ORDER 1 x ATTA-5KG", "ORDER 1 x TOOR-1KG", "ORDER 1 x RICE-5KG")
    async with app_client(meta_app(rate_limit_per_sender="2/minute")) as client:
        await deliver(client, meta_delivery(messages))
        await deliver(client, meta_delivery(messages))  # replays do not count

    assert (await snapshot(db)).orders == 2
    kept = await rows(db, outbox_messages)
    assert [row["body"] == replies.RATE_LIMITED for row in kept] == [False, False, True]


# Statuses


async def test_statuses_are_kept_once_per_state_and_never_move_backwards(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    wamid = new_wamid()
    for state in ("sent", "read", "delivered", "sent"):
        response = await deliver(client, meta_delivery(statuses=[meta_status(wamid, state)]))
        assert response.status_code == 200, response.text
        assert response.json() == {"received": 0, "statuses": 1, "dead_lettered": 0}

    [row] = await rows(db, message_statuses, message_statuses.c.message_id == wamid)
    assert (row["provider"], row["status"]) == ("meta", "read")
    keys = await rows(db, webhook_idempotency, webhook_idempotency.c.webhook_type == "meta_status")
    assert len(keys) == 3  # the second "sent" was the first delivery again: replayed


async def test_the_status_fixture_is_recorded_under_its_chunks_key(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    body = (FIXTURES / "meta_status_sent.json").read_bytes()
    assert (await deliver(client, body)).json() == {
        "received": 0,
        "statuses": 1,
        "dead_lettered": 0,
    }
    [record] = await rows(db, webhook_idempotency)
    [chunk] = meta_statuses.chunks(meta.parse_delivery(body).statuses)
    assert record["idempotency_key"] == meta_statuses.key(meta_statuses.content(chunk))
    [row] = await rows(db, message_statuses)
    assert (row["message_id"], row["status"]) == ("wamid.xyzxyz", "sent")


async def test_a_large_delivery_of_statuses_takes_one_transaction_per_chunk_and_replays(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    size = meta_statuses.CHUNK_SIZE
    statuses = [meta_status(new_wamid(), "delivered") for _ in range(2 * size + 100)]
    body = meta_delivery(statuses=statuses, entries=3)

    first = await deliver(client, body)
    kept = await rows(db, message_statuses)
    again = await deliver(client, body)

    expected = {"received": 0, "statuses": len(statuses), "dead_lettered": 0}
    assert (first.status_code, first.json()) == (200, expected)
    assert (again.status_code, again.json()) == (200, expected)
    assert len(kept) == len(statuses)
    assert await rows(db, message_statuses) == kept  # the redelivery changed nothing
    records = await rows(db, webhook_idempotency)
    assert len(records) == 3  # one claim per chunk of 500, not one per status
    assert {record["status"] for record in records} == {"completed"}


async def test_statuses_never_move_backwards_within_a_delivery_or_when_rebatched(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    first, second, third = new_wamid(), new_wamid(), new_wamid()
    delivery = [
        meta_status(first, "read"),
        meta_status(second, "delivered"),
        meta_status(first, "sent"),
        meta_status(second, "failed"),  # the same rank as delivered: the first one stays
        meta_status(third, "sent"),
        meta_status(first, "delivered"),
        meta_status(third, "delivered"),
    ]
    response = await deliver(client, meta_delivery(statuses=delivery, entries=2))
    assert response.status_code == 200, response.text
    rebatched = [meta_status(third, "sent"), meta_status(first, "sent"), delivery[1]]
    assert (await deliver(client, meta_delivery(statuses=rebatched))).status_code == 200

    states = {row["message_id"]: row["status"] for row in await rows(db, message_statuses)}
    assert states == {first: "read", second: "delivered", third: "delivered"}


async def test_concurrent_deliveries_of_the_same_statuses_in_other_orders_all_succeed(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    wamids = [new_wamid() for _ in range(40)]
    steps = ("sent", "delivered", "read")
    bodies = [
        meta_delivery(statuses=[meta_status(wamid, state) for wamid in order], entries=entries)
        for state in steps
        for order, entries in ((wamids, 1), (wamids[::-1], 3))
    ]

    responses = await asyncio.gather(*(deliver(client, body) for body in bodies))

    assert [response.status_code for response in responses] == [200] * len(bodies)
    states = {row["message_id"]: row["status"] for row in await rows(db, message_statuses)}
    assert states == dict.fromkeys(wamids, "read")


# Signed but unprocessable: 200 and a dead letter, never a retry loop


@pytest.mark.parametrize(
    "body",
    [
        b'{"entry": [ not json, from 919876543210',
        b'{"object": "page", "entry": []}',
        "नमस्ते 919876543210".encode("utf-16"),
    ],
    ids=["garbage", "unknown shape", "not utf-8"],
)
async def test_an_unreadable_signed_delivery_answers_200_and_is_kept_once(
    client: httpx.AsyncClient, db: AsyncEngine, body: bytes
) -> None:
    first = await deliver(client, body)
    again = await deliver(client, body)

    for response in (first, again):
        assert response.status_code == 200, response.text
        assert response.json() == {"received": 0, "statuses": 0, "dead_lettered": 1}
    [letter] = await rows(db, dead_letters)  # the redelivery added no copy
    assert letter["provider"] == "meta"
    assert letter["reason"]
    assert "919876543210" not in letter["body"]
    assert (await snapshot(db)).orders == 0


async def test_an_unusable_message_is_kept_while_its_siblings_are_processed(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    good = meta_text_message("ORDER 1 x ATTA-5KG")
    no_id = meta_text_message("ORDER 5 x ATTA-5KG")
    del no_id["id"]

    response = await deliver(client, meta_delivery([good, no_id]))

    assert response.status_code == 200, response.text
    assert response.json() == {"received": 1, "statuses": 0, "dead_lettered": 1}
    assert (await snapshot(db)).orders == 1
    [letter] = await rows(db, dead_letters)
    assert "message id" in letter["reason"]
    assert META_SENDER not in letter["body"]


async def test_a_wamid_seen_before_with_other_content_is_kept_not_processed(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    wamid = new_wamid()
    await deliver(client, meta_delivery([meta_text_message("ORDER 1 x ATTA-5KG", wamid=wamid)]))
    other = meta_text_message("ORDER 9 x ATTA-5KG", wamid=wamid)

    response = await deliver(client, meta_delivery([other]))

    assert response.status_code == 200, response.text
    assert (await snapshot(db)).stock["ATTA-5KG"] == STOCK["ATTA-5KG"] - 1
    assert await count(db, dead_letters) == 1


# Failures Meta must retry


@pytest.mark.parametrize(
    ("error", "status"),
    [(StoreBusy("injected: the store is busy", retry_after=2), 503), (RuntimeError("bug"), 500)],
)
async def test_a_failed_message_makes_meta_retry_and_the_retry_completes_the_delivery(
    client: httpx.AsyncClient,
    db: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    status: int,
) -> None:
    messages = texts("ORDER 1 x ATTA-5KG", "ORDER 1 x TOOR-1KG", "ORDER 1 x RICE-5KG")
    real_place_order = services.place_order

    async def failing_for_the_second(*args: Any) -> services.MessageOutcome:
        if args[3].message_id == messages[1]["id"]:
            raise error
        return await real_place_order(*args)

    monkeypatch.setattr(services, "place_order", failing_for_the_second)
    failed = await deliver(client, meta_delivery(messages))

    assert_problem(failed, status, "delivery-incomplete")
    if status == 503:
        assert failed.headers["retry-after"] == "2"
    assert "bug" not in failed.text
    assert (await snapshot(db)).orders == 2  # its siblings were processed
    assert await count(db, outbox_messages) == 2  # and the failed one left no reply behind

    monkeypatch.setattr(services, "place_order", real_place_order)
    retried = await deliver(client, meta_delivery(messages))

    assert retried.status_code == 200, retried.text
    state = await snapshot(db)
    assert (state.orders, state.ledger_entries) == (3, 3)
    assert await count(db, outbox_messages) == 3
    await assert_audit_passes(db)


# The outbox and its sender


async def test_the_sender_sends_each_reply_once(
    client: httpx.AsyncClient, db: AsyncEngine, graph: tuple[FakeGraph, httpx.AsyncClient]
) -> None:
    fake, http = graph
    messages = texts("ORDER 1 x ATTA-5KG", "MENU", "ORDER 2 x SUGAR-1KG")
    await deliver(client, meta_delivery(messages))
    await deliver(client, meta_delivery(messages))
    queued = await rows(db, outbox_messages)
    assert [row["idempotency_key"] for row in queued] == [f"reply:{m['id']}" for m in messages]
    assert {row["status"] for row in queued} == {"pending"}

    sender = sender_for(db, http)
    now = utcnow()
    assert await sender.send_due(now) == 3
    assert await sender.send_due(now + timedelta(hours=1)) == 0

    assert len(fake.sends) == len(fake.delivered) == 3
    for send, row in zip(fake.sends, queued, strict=True):
        assert send.phone_number_id == PHONE_NUMBER_ID
        assert send.authorization == f"Bearer {ACCESS_TOKEN}"
        assert send.idempotency_key == row["idempotency_key"]
        assert send.payload["to"] == META_SENDER
        assert send.payload["messaging_product"] == "whatsapp"
        assert send.payload["text"]["body"] == row["body"]
    sent = await rows(db, outbox_messages)
    assert [row["status"] for row in sent] == ["sent"] * 3
    assert [row["provider_message_id"] for row in sent] == [
        "wamid.fake-1",
        "wamid.fake-2",
        "wamid.fake-3",
    ]
    assert all(row["attempts"] == 1 and row["sent_at"] is not None for row in sent)


async def test_two_senders_at_once_send_each_reply_once(
    client: httpx.AsyncClient, db: AsyncEngine, graph: tuple[FakeGraph, httpx.AsyncClient]
) -> None:
    fake, http = graph
    await deliver(client, meta_delivery(texts("MENU", "HELP", "STATUS", "ORDER 1 x OIL-1L")))
    senders = [sender_for(db, http, batch_size=2) for _ in range(3)]
    now = utcnow()

    sent = await asyncio.gather(*(sender.send_due(now) for sender in senders))

    assert sum(sent) == 4
    assert len(fake.sends) == len(fake.delivered) == 4
    assert {row["status"] for row in await rows(db, outbox_messages)} == {"sent"}


async def test_a_sender_crash_after_the_send_resends_with_the_same_key_and_delivers_once(
    client: httpx.AsyncClient,
    db: AsyncEngine,
    graph: tuple[FakeGraph, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, http = graph
    await deliver(client, meta_delivery(texts("ORDER 1 x ATTA-5KG")))
    sender = sender_for(db, http)
    now = utcnow()

    async def database_gone(*_args: Any, **_kwargs: Any) -> bool:
        raise ConnectionError("injected: the database went away after the POST")

    monkeypatch.setattr(OutboxRepository, "mark_sent", database_gone)
    with pytest.raises(ConnectionError):
        await sender.send_due(now)
    [row] = await rows(db, outbox_messages)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    monkeypatch.undo()

    assert await sender.send_due(now) == 0  # claimed: no second send while the lease lasts
    assert await sender.send_due(now + sender.claim_lease + timedelta(seconds=1)) == 1

    assert len(fake.sends) == 2
    assert fake.sends[0].idempotency_key == fake.sends[1].idempotency_key == row["idempotency_key"]
    assert len(fake.delivered) == 1  # the customer got one message
    [row] = await rows(db, outbox_messages)
    assert (row["status"], row["attempts"], row["provider_message_id"]) == (
        "sent",
        2,
        "wamid.fake-1",
    )
    await assert_audit_passes(db)


async def test_failed_sends_back_off_exponentially_then_succeed(
    client: httpx.AsyncClient, db: AsyncEngine, graph: tuple[FakeGraph, httpx.AsyncClient]
) -> None:
    fake, http = graph
    await deliver(client, meta_delivery(texts("MENU")))
    fake.failures = [500, 503]
    sender = sender_for(db, http, retry=RetryPolicy(first_delay=timedelta(seconds=5)))
    now = utcnow()

    assert await sender.send_due(now) == 0
    [row] = await rows(db, outbox_messages)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert as_utc(row["next_attempt_at"]) == now + timedelta(seconds=5)
    assert row["last_error"].startswith("HTTP 500 (131000")

    assert await sender.send_due(now + timedelta(seconds=4)) == 0  # not due yet
    assert len(fake.sends) == 1
    assert await sender.send_due(now + timedelta(seconds=5)) == 0
    [row] = await rows(db, outbox_messages)
    assert as_utc(row["next_attempt_at"]) == now + timedelta(seconds=5 + 10)

    assert await sender.send_due(now + timedelta(seconds=15)) == 1
    [row] = await rows(db, outbox_messages)
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 3, None)
    assert len(fake.delivered) == 1


@pytest.mark.parametrize(
    ("failures", "max_attempts", "attempts"),
    [([400], 8, 1), ([500, 502], 2, 2)],
    ids=["refused", "retries exhausted"],
)
async def test_a_send_that_cannot_succeed_ends_failed(
    client: httpx.AsyncClient,
    db: AsyncEngine,
    graph: tuple[FakeGraph, httpx.AsyncClient],
    failures: list[int],
    max_attempts: int,
    attempts: int,
) -> None:
    fake, http = graph
    await deliver(client, meta_delivery(texts("HELP")))
    fake.failures = list(failures)
    sender = sender_for(db, http, retry=RetryPolicy(max_attempts=max_attempts))
    now = utcnow()
    for hour in range(3):
        await sender.send_due(now + timedelta(hours=hour))

    [row] = await rows(db, outbox_messages)
    assert (row["status"], row["attempts"]) == ("failed", attempts)
    assert len(fake.sends) == attempts
    assert fake.delivered == []


async def test_without_an_access_token_nothing_is_sent_or_lost(
    client: httpx.AsyncClient, db: AsyncEngine, graph: tuple[FakeGraph, httpx.AsyncClient]
) -> None:
    fake, http = graph
    await deliver(client, meta_delivery(texts("HELP")))
    sender = OutboxSender(db, GRAPH, None, PHONE_NUMBER_ID, client=http)
    assert await sender.send_due() == 0
    assert fake.sends == []
    [row] = await rows(db, outbox_messages)
    assert (row["status"], row["attempts"]) == ("pending", 0)


async def test_the_sender_runs_against_a_real_server_until_stopped(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await deliver(client, meta_delivery(texts("ORDER 1 x ATTA-5KG", "STATUS")))
    fake = FakeGraph()
    with serving(fake.app) as base_url:
        sender = OutboxSender(db, f"{base_url}/v21.0", ACCESS_TOKEN, PHONE_NUMBER_ID)
        stop = asyncio.Event()
        running = asyncio.create_task(sender.run(stop, interval=0.05))
        async with asyncio.timeout(15):
            while len(fake.delivered) < 2:  # noqa: ASYNC110 (set from the server's thread)
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(running, timeout=5)

    assert len(fake.sends) == 2
    assert {row["status"] for row in await rows(db, outbox_messages)} == {"sent"}
    await assert_audit_passes(db)
