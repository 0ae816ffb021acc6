"""The console's doors, in process: who signs in, who may change what, and what a page shows."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.db.operators import add_operator
from whatsorder.db.tables import inbound_deliveries, operator_actions, products
from whatsorder.operators import hash_password

PASSWORD = "correct horse battery"


@pytest.fixture
async def console(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(console_secret="a console secret for tests, long enough")
    async with db.begin() as connection:
        for name, role in (("asha", "operator"), ("vik", "viewer")):
            await add_operator(connection, name, role, hash_password(PASSWORD), datetime.now(UTC))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        yield http
    await app.state.runtime.close()


async def sign_in(http: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    return await http.post("/console/login", data={"name": name, "password": password})


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "the page has no CSRF token"
    return found.group(1)


async def test_pages_send_a_stranger_to_sign_in(console: httpx.AsyncClient) -> None:
    for path in ("/console/orders", "/console/catalogue", "/console/audit"):
        answer = await console.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].endswith("/console/login")


async def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(
    console: httpx.AsyncClient,
) -> None:
    wrong = await sign_in(console, "asha", "not the password at all")
    unknown = await sign_in(console, "nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert "do not match an active operator" in wrong.text
    assert "do not match an active operator" in unknown.text
    assert (await console.get("/console/orders")).status_code == 303  # still signed out


async def test_sign_in_sets_a_strict_http_only_secure_cookie_and_sign_out_ends_it(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    answer = await sign_in(console, "asha")
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "secure" in cookie
    page = await console.get("/console/orders")
    assert page.status_code == 200
    assert "<h1>Orders</h1>" in page.text
    assert "asha (operator)" in page.text
    out = await console.post("/console/logout", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303
    assert (await console.get("/console/orders")).status_code == 303
    async with db.connect() as connection:
        actions = (await connection.execute(select(operator_actions.c.action))).scalars().all()
    assert "sign-in" in actions
    assert "sign-out" in actions


async def test_sign_ins_are_rate_limited_per_account(console: httpx.AsyncClient) -> None:
    statuses = [(await sign_in(console, "asha", "wrong password!!")).status_code for _ in range(6)]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    assert (await sign_in(console, "asha")).status_code == 429  # even the right one, for now


async def test_a_viewer_is_refused_a_change_and_nothing_changes(
    console: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await sign_in(console, "vik")
    page = await console.get("/console/catalogue")
    assert "Save ATTA-5KG" not in page.text  # no forms for a viewer
    async with db.connect() as connection:
        before = (await connection.execute(select(products.c.stock))).scalars().all()
    refused = await console.post(
        "/console/catalogue/ATTA-5KG",
        data={
            "csrf_token": csrf_of(page),
            "seen_price": 1,
            "seen_stock": 1,
            "unit_price": 1,
            "stock": 0,
        },
    )
    assert refused.status_code == 403
    assert "viewer" in refused.text
    async with db.connect() as connection:
        assert (await connection.execute(select(products.c.stock))).scalars().all() == before


async def test_a_change_without_the_csrf_token_is_refused(console: httpx.AsyncClient) -> None:
    await sign_in(console, "asha")
    refused = await console.post(
        "/console/catalogue/ATTA-5KG",
        data={"seen_price": 1, "seen_stock": 1, "unit_price": 1, "stock": 0},
    )
    assert refused.status_code == 403
    assert "CSRF" in refused.text


async def test_every_page_carries_a_strict_content_security_policy(
    console: httpx.AsyncClient,
) -> None:
    await sign_in(console, "asha")
    for path in ("/console/login", "/console/orders", "/console/catalogue", "/console/audit"):
        answer = await console.get(path)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert "<script>" not in answer.text  # no inline script anywhere


async def test_without_its_secret_the_console_says_what_to_set(
    app_factory: Callable[..., FastAPI],
) -> None:
    app = app_factory()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        answer = await http.get("/console/login")
    await app.state.runtime.close()
    assert answer.status_code == 503
    assert "WHATSORDER_CONSOLE_SECRET" in answer.text


async def test_the_inbox_counts_no_further_than_its_bound_and_still_pages_on(
    console: httpx.AsyncClient, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million deliveries take longer to count than the page may: past the bound the page
    says "more than", and an older page is offered as long as this one is full."""
    monkeypatch.setattr("whatsorder.db.console_health.COUNT_BOUND", 60)
    now = datetime.now(UTC)
    rows = [
        {"webhook_type": "twilio_inbound", "idempotency_key": f"SM{n:05d}", "outcome": "new"}
        for n in range(70)
    ]
    async with db.begin() as connection:
        await connection.execute(
            inbound_deliveries.insert(), [{**row, "received_at": now} for row in rows]
        )
    await sign_in(console, "vik")

    first = await console.get("/console/inbox")
    assert "Deliveries: more than 60 (not counted further)" in first.text
    assert "page=2" in first.text
    assert "SM00069" in first.text
    second = await console.get("/console/inbox?page=2")
    assert second.status_code == 200
    assert "SM00000" in second.text
    assert "SM00069" not in second.text
    assert "page=3" not in second.text  # 20 left: not a full page

    exact = await console.get("/console/inbox?outcome=replayed")
    assert "Deliveries: 0" in exact.text
