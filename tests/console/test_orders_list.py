"""The orders list's filters: status, retailer, placed between two days, search; and their pages."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.db.operators import add_operator
from whatsorder.db.tables import orders, retailers
from whatsorder.operators import hash_password

PASSWORD = "correct horse battery"
DAY = datetime(2026, 11, 10, tzinfo=UTC)


@pytest.fixture
async def console(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(console_secret="a console secret for tests, long enough")
    async with db.begin() as connection:
        await add_operator(connection, "asha", "operator", hash_password(PASSWORD), DAY)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        signed = await http.post("/console/login", data={"name": "asha", "password": PASSWORD})
        assert signed.status_code == 303
        yield http
    await app.state.runtime.close()


async def add_orders(db: AsyncEngine) -> None:
    """Two retailers; 120 orders of Asha's, one every hour from 2026-11-10 00:30 UTC (so five
    days), every third one paid; and one of Bala's at the very end of 2026-11-11."""
    async with db.begin() as connection:
        await connection.execute(
            insert(retailers),
            [
                {
                    "id": 1,
                    "whatsapp_id": "whatsapp:+919800001111",
                    "name": "Asha Stores",
                    "created_at": DAY,
                },
                {
                    "id": 2,
                    "whatsapp_id": "whatsapp:+919800002222",
                    "name": "Bala Traders",
                    "created_at": DAY,
                },
            ],
        )
        rows = [
            order_row(
                n + 1, 1, "paid" if n % 3 == 0 else "placed", DAY + timedelta(minutes=30 + 60 * n)
            )
            for n in range(120)
        ]
        rows.append(order_row(121, 2, "placed", datetime(2026, 11, 11, 23, 59, 59, 999999, UTC)))
        await connection.execute(insert(orders), rows)


def order_row(order_id: int, retailer_id: int, status: str, at: datetime) -> dict[str, object]:
    return {
        "id": order_id,
        "retailer_id": retailer_id,
        "status": status,
        "currency": "INR",
        "total": 4800,
        "source": "twilio",
        "source_message_id": f"SM{order_id:032d}",
        "created_at": at,
    }


def numbers(page: httpx.Response) -> list[str]:
    return re.findall(r">(ORD-\d+)</a>", page.text)


def count(page: httpx.Response) -> int:
    found = re.search(r'<p class="count">(\d+) order', page.text)
    assert found, page.text
    return int(found.group(1))


async def test_from_and_to_keep_whole_utc_days_both_included(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await add_orders(db)
    page = await console.get("/console/orders", params={"from": "2026-11-11", "to": "2026-11-11"})
    assert page.status_code == 200
    # Asha's 24 orders of the 11th (00:30 … 23:30) and Bala's at 23:59:59.999999.
    assert count(page) == 25
    shown = numbers(page)
    assert shown[0] == "ORD-000121"
    assert "ORD-000048" in shown  # 2026-11-11 23:30
    assert "ORD-000025" in shown  # 2026-11-11 00:30
    assert "ORD-000024" not in shown  # 2026-11-10 23:30
    assert "ORD-000049" not in shown  # 2026-11-12 00:30
    only_from = await console.get("/console/orders", params={"from": "2026-11-14"})
    assert count(only_from) == 24  # the 14th: the last day of Asha's orders
    only_to = await console.get("/console/orders", params={"to": "2026-11-10"})
    assert count(only_to) == 24


async def test_the_date_range_combines_with_status_retailer_and_search(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await add_orders(db)
    days = {"from": "2026-11-11", "to": "2026-11-12"}
    paid = await console.get("/console/orders", params={**days, "status": "paid"})
    assert count(paid) == 16  # every third of Asha's 48 orders of those two days
    bala = await console.get("/console/orders", params={**days, "retailer": "2"})
    assert numbers(bala) == ["ORD-000121"]
    by_phone = await console.get("/console/orders", params={**days, "q": "2222"})
    assert numbers(by_phone) == ["ORD-000121"]
    by_phone_paid = await console.get(
        "/console/orders", params={**days, "q": "1111", "status": "paid", "retailer": "1"}
    )
    assert count(by_phone_paid) == 16
    outside = await console.get("/console/orders", params={"from": "2026-11-12", "q": "2222"})
    assert count(outside) == 0
    assert "No order matches." in outside.text


async def test_a_retailer_s_name_in_the_list_shows_only_its_orders_keeping_the_other_filters(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await add_orders(db)
    days = await console.get("/console/orders", params={"from": "2026-11-11", "to": "2026-11-11"})
    link = re.search(
        r'<a href="([^"]+)" title="Only this retailer\'s orders">Bala Traders', days.text
    )
    assert link, days.text
    bala = await console.get(link.group(1).replace("&amp;", "&"))
    assert numbers(bala) == ["ORD-000121"]
    assert "Retailer: Bala Traders" in bala.text
    assert 'value="2026-11-11"' in bala.text
    anyone = re.search(r'<a href="([^"]+)">any retailer</a>', bala.text)
    assert anyone
    assert count(await console.get(anyone.group(1).replace("&amp;", "&"))) == 25


async def test_the_next_page_keeps_every_filter(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await add_orders(db)
    chosen = {"from": "2026-11-10", "to": "2026-11-14", "status": "placed", "retailer": "1"}
    first = await console.get("/console/orders", params=chosen)
    assert count(first) == 80
    assert "page 1 of 2" in first.text
    older = re.search(r'<a href="([^"]+)">Older</a>', first.text)
    assert older, first.text
    link = older.group(1).replace("&amp;", "&")
    for name, value in chosen.items():
        assert f"{name}={value}" in link
    second = await console.get(link)
    assert "page 2 of 2" in second.text
    assert count(second) == 80
    assert len(numbers(second)) == 30
    assert set(numbers(first)).isdisjoint(numbers(second))
    assert 'value="2026-11-10"' in second.text  # the form still shows the range


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"from": "11/10/2026"}, "From must be a date written YYYY-MM-DD"),
        ({"to": "2026-02-30"}, "To must be a date written YYYY-MM-DD"),
        ({"from": "2026-11-12", "to": "2026-11-11"}, "is after To"),
        ({"to": "9999-12-31", "from": "0001-01-01"}, None),  # the widest range works
        ({"retailer": "Asha"}, "Retailer must be a retailer from the list"),
        ({"retailer": "²"}, "Retailer must be a retailer from the list"),
        ({"retailer": "999"}, "There is no retailer 999."),
        ({"page": "0"}, "Page must be a page number"),
        ({"page": "99999999999999999999"}, "Page must be a page number"),
        ({"status": "shipped"}, "Status must be one of placed, paid, cancelled"),
        ({"q": "9" * 101}, "Search for at most 100 characters"),
    ],
)
async def test_a_bad_filter_says_what_is_wrong_with_a_400_and_keeps_what_was_typed(
    console: httpx.AsyncClient, db: AsyncEngine, params: dict[str, str], says: str | None
) -> None:
    await add_orders(db)
    page = await console.get("/console/orders", params=params)
    if says is None:
        assert page.status_code == 200
        assert count(page) == 121
        return
    assert page.status_code == 400
    assert says in page.text
    assert 'role="alert"' in page.text
    assert numbers(page) == []
    for name in ("from", "to"):
        if name in params:
            assert f'value="{params[name]}"' in page.text


async def test_every_console_answer_says_how_long_the_server_took(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await add_orders(db)
    for path in ("/console/orders", "/console/orders?from=nonsense", "/console/login"):
        answer = await console.get(path)
        timing = re.fullmatch(r"app;dur=(\d+\.\d)", answer.headers["server-timing"])
        assert timing, answer.headers["server-timing"]
        assert 0 < float(timing.group(1)) < 10_000
