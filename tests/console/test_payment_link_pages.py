"""The order page's payment links (issue #17): the button, what pressing it does (one link,
however often and however many press), who may press it, a provider's refusal shown with its
own message, and the same from the command line (``whatsorder payment-link``)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import serving
from fake_payment_apis import STRIPE_KEY, FakePaymentApis
from support import INBOUND_PATH, encode, inbound_form, signed_headers
from whatsorder.cli import commands
from whatsorder.cli.database import with_engine
from whatsorder.db.operators import add_operator
from whatsorder.db.tables import operator_actions, payment_links
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.operators import hash_password
from whatsorder.ordering.model import InboundMessage
from whatsorder.ordering.services import receive_message

PASSWORD = "correct horse battery"
ORDER = "/console/orders/ORD-000001"
LINK = "/console/orders/ORD-000001/payment-link"


@pytest.fixture
def fake() -> Iterator[tuple[FakePaymentApis, str]]:
    apis = FakePaymentApis()
    with serving(apis.app) as base:
        yield apis, base


def _stripe(base: str, key: str = STRIPE_KEY) -> dict[str, Any]:
    return {"payment_link_provider": "stripe", "stripe_api_key": key, "stripe_api_url": base}


@pytest.fixture
async def shop(
    app_factory: Callable[..., FastAPI], db: AsyncEngine, fake: tuple[FakePaymentApis, str]
) -> AsyncIterator[Callable[..., Any]]:
    """``shop(name, **settings)``: a client signed in as that operator (asha: operator, vik:
    viewer) to the app with those settings, ORD-000001 placed through Twilio's webhook."""
    async with db.begin() as connection:
        for name, role in (("asha", "operator"), ("vik", "viewer")):
            await add_operator(connection, name, role, hash_password(PASSWORD), datetime.now(UTC))
    apps: list[FastAPI] = []
    clients: list[httpx.AsyncClient] = []

    async def client(name: str, **settings: Any) -> httpx.AsyncClient:
        app = app_factory(console_secret="a console secret for tests, long enough", **settings)
        apps.append(app)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
        http = httpx.AsyncClient(transport=transport, base_url="https://testserver")
        clients.append(http)
        if len(apps) == 1:
            pairs = inbound_form("ORDER 2 x ATTA-5KG")
            placed = await http.post(
                INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
            )
            assert "ORD-000001" in placed.text
        signed = await http.post("/console/login", data={"name": name, "password": PASSWORD})
        assert signed.status_code == 303
        return http

    yield client
    for http in clients:
        await http.aclose()
    for app in apps:
        await app.state.runtime.close()


async def _press(http: httpx.AsyncClient) -> httpx.Response:
    page = await http.get(ORDER)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return await http.post(LINK, data={"csrf_token": token.group(1)})


async def _links(db: AsyncEngine) -> list[tuple[str, str]]:
    async with db.connect() as connection:
        rows = await connection.execute(select(payment_links.c.status, payment_links.c.url))
        return [(row.status, row.url) for row in rows]


async def _audit_lines(db: AsyncEngine) -> int:
    async with db.connect() as connection:
        found = await connection.scalars(
            select(operator_actions.c.id).where(operator_actions.c.action == "order.payment_link")
        )
        return len(found.all())


async def test_an_operator_makes_the_link_once_however_often_it_is_pressed(
    shop: Callable[..., Any], db: AsyncEngine, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    apis.delay = 0.2
    asha = await shop("asha", **_stripe(base))
    page = await asha.get(ORDER)
    assert "Make a payment link" in page.text
    assert "No payment link: the customer gets one by sending PAY ORD-000001" in page.text

    pressed = await asyncio.gather(_press(asha), _press(asha), _press(asha))

    assert [answer.status_code for answer in pressed] == [200, 200, 200]
    (link,) = apis.links("stripe")
    assert all(f"Payment link (stripe): {link['url']}" in answer.text for answer in pressed)
    assert await _links(db) == [("live", link["url"])]
    assert f'href="{link["url"]}"' in (await asha.get(ORDER)).text
    assert await _audit_lines(db) == 3


async def test_a_viewer_may_not_and_a_refusal_shows_the_providers_message(
    shop: Callable[..., Any], db: AsyncEngine, fake: tuple[FakePaymentApis, str]
) -> None:
    _apis, base = fake
    vik = await shop("vik", **_stripe(base))
    assert "Make a payment link" not in (await vik.get(ORDER)).text
    assert (await _press(vik)).status_code == 403

    asha = await shop("asha", **_stripe(base, key="sk_test_wrong"))
    refused = await _press(asha)
    assert refused.status_code == 502
    assert "No payment link was made: Stripe refused the link (HTTP 401)" in refused.text
    assert "Invalid API Key provided" in refused.text
    page = await asha.get(ORDER)
    assert "failed: Stripe refused the link (HTTP 401)" in page.text
    assert await _audit_lines(db) == 1


async def test_nothing_to_pay_is_a_409_that_says_why(
    shop: Callable[..., Any], fake: tuple[FakePaymentApis, str]
) -> None:
    apis, _base = fake
    asha = await shop("asha")  # no link provider configured
    not_set_up = await _press(asha)
    assert not_set_up.status_code == 409
    assert "Paying by link is not set up" in not_set_up.text
    missing = await asha.post(
        "/console/orders/ORD-000777/payment-link",
        data={"csrf_token": re.findall(r'csrf_token" value="([^"]+)"', not_set_up.text)[0]},
    )
    assert missing.status_code == 404
    assert apis.requests == []


def test_the_command_line_makes_the_same_one_link(
    database_url: str, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    env = {
        "WHATSORDER_DATABASE_URL": database_url,
        "WHATSORDER_PAYMENT_LINK_PROVIDER": "stripe",
        "WHATSORDER_STRIPE_API_KEY": STRIPE_KEY,
        "WHATSORDER_STRIPE_API_URL": base,
    }
    runner = CliRunner()
    unknown = runner.invoke(commands, ["payment-link", "ORD-000001"], env=env)
    assert unknown.exit_code == 1
    assert "could not find order ORD-000001" in unknown.output
    assert apis.requests == []

    async def place(engine: AsyncEngine) -> None:
        message = InboundMessage(
            "twilio", "SM-cli-link", "whatsapp:+919800000012", "Ravi", "2 x ATTA-5KG"
        )
        await receive_message(SqlUnitOfWork(engine), message, datetime.now(UTC))

    asyncio.run(with_engine(database_url, place))
    made = runner.invoke(commands, ["payment-link", "ord-1", "--as", "asha"], env=env)
    again = runner.invoke(commands, ["payment-link", "ORD-000001"], env=env)
    (link,) = apis.links("stripe")
    assert made.exit_code == 0, made.output
    assert made.output.strip() == f"stripe link for ORD-1: {link['url']}"
    assert link["url"] in again.output
