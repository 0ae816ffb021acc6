"""Hostile Meta fields, signed exactly as Meta signs them: values no column can hold (too long,
NUL spelled "\\u0000", the wrong JSON type), and absurd timestamps.

Meta retries anything but a 200 for seven days, so the oracle is: every delivery is answered
200, never a 5xx, on the first delivery and on every redelivery; an item we cannot process is
kept once as a dead letter and changes nothing else; an item whose odd field is only for the
record (an error code, a timestamp, a recipient) is processed. In process on SQLite and
PostgreSQL, and against a real server of four workers on PostgreSQL, as the tester ran it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from faults.hostile_support import (
    all_providers,
    assert_clean_answer,
    row_counts,
    server_secrets_env,
)
from support import (
    META_PATH,
    app_client,
    meta_delivery,
    meta_headers,
    meta_status,
    meta_text_message,
    new_wamid,
    running_server,
)
from whatsorder.db.engine import open_database
from whatsorder.db.tables import message_statuses, retailers

NUL = "\x00"  # json.dumps spells it "\u0000", as a hostile sender would


@dataclass(frozen=True)
class Case:
    """One hostile delivery: how to build it, and whether its one item is kept or processed."""

    name: str
    build: Callable[[], bytes]
    dead_letter: bool


def status_with(**fields: Any) -> bytes:
    return meta_delivery(statuses=[{**meta_status(new_wamid(), "sent"), **fields}])


def status_error(code: Any) -> bytes:
    return status_with(status="failed", errors=[{"code": code, "title": "x" * 5000}])


def message_with(words: str = "ORDER 1 x RICE-5KG", **fields: Any) -> bytes:
    return meta_delivery([{**meta_text_message(words), **fields}])


def profile_named(name: Any) -> bytes:
    document = json.loads(message_with())
    document["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = name
    return json.dumps(document).encode()


def cart(product: Any, quantity: Any) -> bytes:
    message = meta_text_message("")
    message.pop("text")
    item = {"product_retailer_id": product, "quantity": quantity, "item_price": 1, "currency": 7}
    message.update(type="order", order={"catalog_id": "1", "product_items": [item]})
    return meta_delivery([message])


KEPT = [
    Case("status-33-characters", lambda: status_with(status="s" * 33), True),
    Case("status-200-characters", lambda: status_with(status="read" * 50), True),
    Case("status-with-nul", lambda: status_with(status=f"sent{NUL}"), True),
    Case("status-a-number", lambda: status_with(status=3), True),
    Case("status-a-list", lambda: status_with(status=["sent"]), True),
    Case("status-null", lambda: status_with(status=None), True),
    Case("status-id-with-nul", lambda: status_with(id=f"wamid.{NUL}abc"), True),
    Case("status-id-201-characters", lambda: status_with(id="w" * 201), True),
    Case("status-id-a-number", lambda: status_with(id=10**30), True),
    Case("message-id-with-nul", lambda: message_with(id=f"wamid.{NUL}abc"), True),
    Case("message-id-201-characters", lambda: message_with(id="w" * 201), True),
    Case("message-id-an-object", lambda: message_with(id={"id": "wamid.x"}), True),
    Case("sender-with-nul", lambda: message_with(**{"from": f"9198{NUL}76"}), True),
    Case("sender-70-digits", lambda: message_with(**{"from": "9" * 70}), True),
    Case("text-body-a-number", lambda: message_with(text={"body": 12}), True),
    Case("cart-product-with-nul", lambda: cart(f"RICE{NUL}-5KG", 1), True),
    Case("cart-product-65-characters", lambda: cart("R" * 65, 1), True),
    Case("cart-quantity-infinite", lambda: cart("RICE-5KG", float("inf")), True),
    Case("cart-quantity-a-list", lambda: cart("RICE-5KG", [1]), True),
]
PROCESSED = [
    Case("error-code-with-nul", lambda: status_error(f"131{NUL}026"), False),
    Case("error-code-40-digits", lambda: status_error("3" * 40), False),
    Case("error-code-huge-number", lambda: status_error(10**40), False),
    Case("error-code-an-object", lambda: status_error({"nested": [NUL]}), False),
    Case("status-timestamp-far-future", lambda: status_with(timestamp="9" * 40), False),
    Case("status-timestamp-negative", lambda: status_with(timestamp=-(10**20)), False),
    Case("status-timestamp-not-a-time", lambda: status_with(timestamp=f"yesterday{NUL}"), False),
    Case("status-recipient-long-with-nul", lambda: status_with(recipient_id=NUL * 5000), False),
    Case("text-with-nul", lambda: message_with(f"ORDER 1 x RICE-5KG{NUL}"), False),
    Case("message-timestamp-absurd", lambda: message_with(timestamp=1e308), False),
    Case("message-type-a-number", lambda: message_with(type=7), False),
    Case("profile-name-nul-and-long", lambda: profile_named(f"As{NUL}ha" + "a" * 5000), False),
    Case("profile-name-an-object", lambda: profile_named({"first": "Asha"}), False),
    Case("cart-quantity-a-googol", lambda: cart("RICE-5KG", 10**100), False),
]
CASES = [pytest.param(case, id=case.name) for case in KEPT + PROCESSED]


def processed_rows(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What processing wrote: new rows outside the records, statistics and dead letters."""
    kept_anyway = {"dead_letters", "webhook_idempotency", "idempotency_stats", "stock"}
    return {
        table: after[table] - before[table]
        for table in after
        if table not in kept_anyway and after[table] != before[table]
    }


@pytest.mark.parametrize("case", CASES)
async def test_a_hostile_meta_field_is_answered_200_every_time_never_a_5xx(
    app_factory: Callable[..., FastAPI], db: AsyncEngine, case: Case
) -> None:
    body = case.build()
    before = await row_counts(db)
    async with app_client(app_factory(**all_providers())) as client:
        answers = [
            await client.post(META_PATH, content=body, headers=meta_headers(body))
            for _ in range(3)  # the delivery and Meta's redeliveries
        ]
    for response in answers:
        assert_clean_answer(response)
        assert response.status_code == 200, response.text
        assert response.json()["dead_lettered"] == int(case.dead_letter), response.text
    after = await row_counts(db)
    assert after["dead_letters"] == before["dead_letters"] + int(case.dead_letter)
    if case.dead_letter:
        assert processed_rows(before, after) == {}  # kept, and nothing else happened
    else:
        assert processed_rows(before, after)  # a status noted, or a reply queued


async def test_nul_and_overlong_values_are_stored_clean_where_they_are_taken(
    app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> None:
    bodies = [status_error(f"131{NUL}026" + "9" * 40), profile_named(f"As{NUL}ha" + "a" * 500)]
    async with app_client(app_factory(**all_providers())) as client:
        for body in bodies:
            response = await client.post(META_PATH, content=body, headers=meta_headers(body))
            assert response.status_code == 200, response.text
    async with db.connect() as connection:
        [code] = (await connection.execute(select(message_statuses.c.error_code))).scalars()
        [name] = (await connection.execute(select(retailers.c.name))).scalars()
    assert code == ("131026" + "9" * 40)[:32]
    assert name == ("Asha" + "a" * 500)[:200]


@pytest.mark.slow
def test_every_hostile_meta_field_against_four_workers_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    cases = KEPT + PROCESSED
    bodies = [case.build() for case in cases]
    env = server_secrets_env()
    with (
        running_server(postgres_url, tmp_path / "server.log", workers=4, **env) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        for _ in range(2):  # the delivery, then Meta's redelivery of it
            for case, body in zip(cases, bodies, strict=True):
                response = client.post(META_PATH, content=body, headers=meta_headers(body))
                assert_clean_answer(response)
                assert response.status_code == 200, (case.name, response.text, server.log())
                assert response.json()["dead_lettered"] == int(case.dead_letter), case.name

    async def dead_letters() -> int:
        engine = open_database(postgres_url)
        try:
            return (await row_counts(engine))["dead_letters"]
        finally:
            await engine.dispose()

    assert asyncio.run(dead_letters()) == len(KEPT)  # once each, though delivered twice
