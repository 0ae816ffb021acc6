"""The order page's replies: each message sent about the order with its provider's latest status,
from signed deliveries through the front door to the page an operator reads."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import FakeGraph
from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    META_VERIFY_TOKEN,
    encode,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_status,
    meta_text_message,
    signed_headers,
    status_form,
)
from whatsorder.db.operators import add_operator
from whatsorder.db.tables import orders, outbox_messages
from whatsorder.operators import hash_password
from whatsorder.ordering.model import order_number
from whatsorder.outbox import OutboxSender

PASSWORD = "correct horse battery"


@pytest.fixture
async def front_door(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app (webhooks and console) with Meta's secrets, an operator signed in."""
    app = app_factory(
        console_secret="a console secret for tests, long enough",
        meta_app_secret=META_APP_SECRET,
        meta_verify_token=META_VERIFY_TOKEN,
    )
    async with db.begin() as connection:
        await add_operator(
            connection, "asha", "operator", hash_password(PASSWORD), datetime.now(UTC)
        )
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        signed = await http.post("/console/login", data={"name": "asha", "password": PASSWORD})
        assert signed.status_code == 303
        yield http
    await app.state.runtime.close()


async def deliver(http: httpx.AsyncClient, body: bytes) -> None:
    answer = await http.post(META_PATH, content=body, headers=meta_headers(body))
    assert answer.status_code == 200, answer.text


async def send_outbox(db: AsyncEngine) -> FakeGraph:
    """Send every queued reply to a fake Graph API, which gives each a message id."""
    fake = FakeGraph()
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://graph.test") as http:
        sender = OutboxSender(db, "http://graph.test/v21.0", "token", "1065403", client=http)
        await sender.send_due()
    return fake


async def reply_ids(db: AsyncEngine) -> dict[str, Any]:
    async with db.connect() as connection:
        rows = await connection.execute(
            select(outbox_messages.c.idempotency_key, outbox_messages.c.provider_message_id)
        )
        return {row.idempotency_key: row.provider_message_id for row in rows}


async def only_order(db: AsyncEngine, source: str) -> str:
    async with db.connect() as connection:
        found = await connection.scalar(select(orders.c.id).where(orders.c.source == source))
    assert found is not None
    return order_number(found)


def replies_table(page: httpx.Response) -> list[list[str]]:
    section = page.text.split("<h2>Replies</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>", 1)[1], flags=re.S)
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in rows
    ]


async def test_a_meta_reply_delivered_then_read_shows_read_on_the_order_page(
    front_door: httpx.AsyncClient, db: AsyncEngine
) -> None:
    placing = meta_text_message("ORDER 2 x ATTA-5KG")
    await deliver(front_door, meta_delivery([placing]))
    number = await only_order(db, "meta")
    before = replies_table(await front_door.get(f"/console/orders/{number}"))
    assert len(before) == 1
    assert "pending" in before[0][2]
    assert before[0][3] == "no status yet"

    await send_outbox(db)
    reply_id = (await reply_ids(db))[f"reply:{placing['id']}"]
    for state in ("delivered", "read"):
        await deliver(front_door, meta_delivery(statuses=[meta_status(reply_id, state)]))
    page = await front_door.get(f"/console/orders/{number}")
    assert page.status_code == 200
    shown = replies_table(page)
    assert len(shown) == 1
    assert shown[0][1] == f"reply:{placing['id']}"
    assert shown[0][2].startswith("sent")
    assert shown[0][3] == "read"

    # A late "delivered" (callbacks race) does not move the page back.
    await deliver(front_door, meta_delivery(statuses=[meta_status(reply_id, "delivered")]))
    assert replies_table(await front_door.get(f"/console/orders/{number}"))[0][3] == "read"


async def test_a_later_message_about_the_order_shows_its_reply_and_its_failure_code(
    front_door: httpx.AsyncClient, db: AsyncEngine
) -> None:
    placing = meta_text_message("ORDER 1 x ATTA-5KG")
    other = meta_text_message("ORDER 1 x SUGAR-1KG")  # another order: not on this page
    await deliver(front_door, meta_delivery([placing, other]))
    async with db.connect() as connection:
        number = order_number(
            await connection.scalar(
                select(orders.c.id).where(orders.c.source_message_id == placing["id"])
            )
        )
    cancelling = meta_text_message(f"CANCEL {number}")
    await deliver(front_door, meta_delivery([cancelling]))
    await send_outbox(db)
    ids = await reply_ids(db)
    failed = meta_status(ids[f"reply:{cancelling['id']}"], "failed")
    failed["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
    await deliver(front_door, meta_delivery(statuses=[failed]))

    shown = replies_table(await front_door.get(f"/console/orders/{number}"))
    assert [row[1] for row in shown] == [f"reply:{placing['id']}", f"reply:{cancelling['id']}"]
    assert shown[0][3] == "no status yet"
    assert shown[1][3] == "failed (error 131026)"


async def test_a_twilio_order_says_why_its_reply_has_no_status(
    front_door: httpx.AsyncClient, db: AsyncEngine
) -> None:
    form = inbound_form("ORDER 1 x ATTA-5KG")
    answer = await front_door.post(
        INBOUND_PATH, content=encode(form), headers=signed_headers(INBOUND_PATH, form)
    )
    assert answer.status_code == 200
    # A status callback for some message of ours: nothing ties it to this order.
    status = status_form("SM" + "0" * 32, "read")
    await front_door.post(
        "/api/v1/whatsapp/status",
        content=encode(status),
        headers=signed_headers("/api/v1/whatsapp/status", status),
    )
    number = await only_order(db, "twilio")
    shown = replies_table(await front_door.get(f"/console/orders/{number}"))
    assert len(shown) == 1
    assert "Twilio does not tell us their message ids" in shown[0][0]
