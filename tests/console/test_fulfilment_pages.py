"""The order page's fulfilment: its buttons, what pressing them does (once, however often), who
may press them, and the transitions and notifications the page then shows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import FakeGraph
from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    META_SENDER,
    META_VERIFY_TOKEN,
    encode,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_status,
    meta_text_message,
    signed_headers,
)
from whatsorder.db.audit import audit
from whatsorder.db.operators import add_operator
from whatsorder.db.tables import operator_actions, order_transitions, outbox_messages
from whatsorder.operators import hash_password
from whatsorder.outbox import OutboxSender

PASSWORD = "correct horse battery"
ORDER = "/console/orders/ORD-000001"


@pytest.fixture
async def shop(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """The app with one order placed through Twilio's webhook; ``shop(name)`` is a client signed
    in as that operator (asha, ravi: operators; vik: a viewer)."""
    app = app_factory(
        console_secret="a console secret for tests, long enough",
        meta_app_secret=META_APP_SECRET,
        meta_verify_token=META_VERIFY_TOKEN,
    )
    async with db.begin() as connection:
        for name, role in (("asha", "operator"), ("ravi", "admin"), ("vik", "viewer")):
            await add_operator(connection, name, role, hash_password(PASSWORD), datetime.now(UTC))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    clients: list[httpx.AsyncClient] = []

    def client(_name: str) -> httpx.AsyncClient:
        http = httpx.AsyncClient(transport=transport, base_url="https://testserver")
        clients.append(http)
        return http

    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        pairs = inbound_form("ORDER 2 x ATTA-5KG")
        placed = await http.post(
            INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
        )
        assert "ORD-000001" in placed.text
    yield client
    for http in clients:
        await http.aclose()
    await app.state.runtime.close()


async def signed_in(shop: Callable[[str], httpx.AsyncClient], name: str) -> httpx.AsyncClient:
    http = shop(name)
    answer = await http.post("/console/login", data={"name": name, "password": PASSWORD})
    assert answer.status_code == 303
    return http


async def press(http: httpx.AsyncClient, action: str, number: str = "ORD-000001") -> httpx.Response:
    page = await http.get(ORDER)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    url = f"/console/orders/{number}/fulfilment/{action}"
    return await http.post(url, data={"csrf_token": token.group(1)})


def buttons(page: httpx.Response) -> list[str]:
    return re.findall(r"/fulfilment/(\w+)\"", page.text)


async def counts(db: AsyncEngine) -> tuple[int, int, int]:
    """(transitions, notifications, audit lines of transitions)."""
    async with db.connect() as connection:
        return (
            int(await connection.scalar(select(func.count()).select_from(order_transitions)) or 0),
            int(
                await connection.scalar(
                    select(func.count()).where(outbox_messages.c.order_id.is_not(None))
                )
                or 0
            ),
            int(
                await connection.scalar(
                    select(func.count()).where(operator_actions.c.action.startswith("order."))
                )
                or 0
            ),
        )


async def test_an_operator_moves_an_order_on_and_the_page_shows_who_and_the_notification(
    shop: Callable[[str], httpx.AsyncClient], db: AsyncEngine
) -> None:
    asha = await signed_in(shop, "asha")
    page = await asha.get(ORDER)
    assert "<dt>Fulfilment</dt>" in page.text
    assert buttons(page) == ["confirm", "cancel"]

    confirmed = await press(asha, "confirm")

    assert confirmed.status_code == 200
    assert "ORD-000001 confirmed (it was placed)." in confirmed.text
    assert buttons(confirmed) == ["pack", "cancel"]
    assert re.search(r"<td>placed</td><td>confirmed</td><td>asha</td>", confirmed.text)
    assert re.search(r"<td>confirmed</td><td>pending \(0 attempts\)</td>", confirmed.text)
    assert await counts(db) == (1, 1, 1)
    listed = await asha.get("/console/orders", params={"fulfilment": "confirmed"})
    assert "ORD-000001" in listed.text
    assert "<td>confirmed</td>" in listed.text
    assert "ORD-000001" not in (await asha.get("/console/orders?fulfilment=packed")).text
    bad = await asha.get("/console/orders", params={"fulfilment": "shipped"})
    assert bad.status_code == 400
    assert "Fulfilment must be one of" in bad.text


async def test_two_operators_pressing_at_once_make_one_change_and_the_second_is_told(
    shop: Callable[[str], httpx.AsyncClient], db: AsyncEngine
) -> None:
    asha, ravi = await signed_in(shop, "asha"), await signed_in(shop, "ravi")

    answers = await asyncio.wait_for(
        asyncio.gather(press(asha, "confirm"), press(ravi, "confirm"), press(asha, "confirm")),
        timeout=30,
    )

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    said = sorted("changed" if "confirmed (it was placed)" in a.text else "repeat" for a in answers)
    assert said == ["changed", "repeat", "repeat"]
    assert all(
        "ORD-000001 was already confirmed: nothing changed." in a.text
        for a in answers
        if "it was placed" not in a.text
    )
    assert await counts(db) == (1, 1, 1)
    async with db.connect() as connection:
        assert await audit(connection) == []


async def test_an_illegal_transition_is_refused_on_the_page_and_changes_nothing(
    shop: Callable[[str], httpx.AsyncClient], db: AsyncEngine
) -> None:
    asha = await signed_in(shop, "asha")

    refused = await press(asha, "dispatch")

    assert refused.status_code == 409
    assert "ORD-000001 is placed: it cannot dispatch yet; the next step is confirm" in refused.text
    assert await counts(db) == (0, 0, 0)
    await press(asha, "cancel")
    after_cancel = await press(asha, "deliver")
    assert after_cancel.status_code == 409
    assert "a cancelled order cannot be delivered" in after_cancel.text
    assert buttons(after_cancel) == []
    assert await counts(db) == (1, 1, 1)


@pytest.mark.parametrize(
    ("who", "action", "number", "status", "says"),
    [
        ("vik", "confirm", "ORD-000001", 403, "vik is a viewer"),
        ("asha", "confirm", "ORD-000042", 404, "There is no order ORD-000042."),
        ("asha", "ship", "ORD-000001", 404, "There is no order ORD-000001 to ship."),
    ],
)
async def test_viewers_unknown_orders_and_unknown_actions_are_refused(
    shop: Callable[[str], httpx.AsyncClient],
    db: AsyncEngine,
    who: str,
    action: str,
    number: str,
    status: int,
    says: str,
) -> None:
    http = await signed_in(shop, who)
    answer = await press(http, action, number)
    assert answer.status_code == status
    assert says in answer.text
    assert await counts(db) == (0, 0, 0)


async def test_a_viewer_sees_no_buttons_and_a_form_without_its_token_is_refused(
    shop: Callable[[str], httpx.AsyncClient], db: AsyncEngine
) -> None:
    vik = await signed_in(shop, "vik")
    assert buttons(await vik.get(ORDER)) == []
    asha = await signed_in(shop, "asha")
    forged = await asha.post(f"{ORDER}/fulfilment/confirm", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert await counts(db) == (0, 0, 0)


def notifications_table(page: httpx.Response) -> list[list[str]]:
    section = page.text.split("<h2>Notifications</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>", 1)[1], flags=re.S)
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in rows
    ]


async def test_a_meta_customers_notification_is_sent_once_and_its_delivery_shows_on_the_order(
    shop: Callable[[str], httpx.AsyncClient], db: AsyncEngine
) -> None:
    asha = await signed_in(shop, "asha")
    body = meta_delivery([meta_text_message("ORDER 1 x OIL-1L")])
    placed = await asha.post(META_PATH, content=body, headers=meta_headers(body))
    assert placed.status_code == 200, placed.text
    await press(asha, "confirm", "ORD-000002")
    await press(asha, "confirm", "ORD-000002")  # a double click

    graph = FakeGraph()
    transport = httpx.ASGITransport(app=graph.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://graph.test") as http:
        sender = OutboxSender(db, "http://graph.test/v21.0", "token", "1065403", client=http)
        await sender.send_due()
        await sender.send_due()

    notices = [send for send in graph.delivered if send.idempotency_key == "notify:2:confirmed"]
    assert len(notices) == 1
    assert notices[0].payload["to"] == META_SENDER
    assert notices[0].payload["text"]["body"].startswith("Your order ORD-000002")
    message_id = f"wamid.fake-{graph.delivered.index(notices[0]) + 1}"
    status = meta_delivery(statuses=[meta_status(message_id, "delivered")])
    answer = await asha.post(META_PATH, content=status, headers=meta_headers(status))
    assert answer.status_code == 200, answer.text

    page = await asha.get("/console/orders/ORD-000002")
    (shown,) = notifications_table(page)
    assert shown[1] == "confirmed"
    assert shown[2].startswith("sent")
    assert shown[4] == "delivered"
