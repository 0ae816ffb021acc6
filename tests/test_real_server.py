"""Against real `whatsorder serve` processes: duplicate storms and a worker killed mid-request."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from support import (
    INBOUND_PATH,
    Snapshot,
    encode,
    inbound_form,
    reply_text,
    running_server,
    signed_headers,
    snapshot,
)
from whatsorder.db.engine import open_database
from whatsorder.ordering.demo import DEMO_CATALOGUE

STOCK = {product.sku: product.stock for product in DEMO_CATALOGUE}
STORM_SIZE = 200


async def _storm(base_url: str, pairs: list[tuple[str, str]], copies: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=copies, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        body, headers = encode(pairs), signed_headers(INBOUND_PATH, pairs)
        return await asyncio.gather(
            *(client.post(INBOUND_PATH, content=body, headers=headers) for _ in range(copies))
        )


@pytest.mark.slow
def test_two_hundred_concurrent_duplicates_create_one_order(
    database_url: str, tmp_path: Path
) -> None:
    pairs = inbound_form("ORDER 2 x ATTA-5KG")
    with running_server(database_url, tmp_path / "server.log", workers=4) as server:
        started = time.monotonic()
        responses = asyncio.run(_storm(server.base_url, pairs, STORM_SIZE))
        elapsed = time.monotonic() - started

    statuses = sorted({response.status_code for response in responses})
    assert statuses == [200], f"statuses {statuses}: {[r.text for r in responses][:3]}"
    originals = [r for r in responses if r.headers.get("idempotent-replayed") != "true"]
    assert len(originals) == 1
    bodies = {response.content for response in responses}
    assert len(bodies) == 1, "every response is the original reply or its replay"
    assert "Order ORD-000001 placed" in reply_text(responses[0])

    async def check() -> None:
        engine = open_database(database_url)
        try:
            state = await snapshot(engine)
        finally:
            await engine.dispose()
        assert (state.orders, state.order_items, state.ledger_entries) == (1, 1, 1)
        assert state.stock["ATTA-5KG"] == STOCK["ATTA-5KG"] - 2
        assert state.idempotency_records == 1

    asyncio.run(check())
    print(
        f"\n{STORM_SIZE} duplicates on {make_url(database_url).get_backend_name()}: {elapsed:.2f} s"
    )


async def _hold_product_lock(database_url: str, sku: str) -> asyncpg.Connection:
    """Lock a product row from outside, so a request placing an order stalls mid-transaction."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn)
    await connection.execute("BEGIN")
    await connection.execute("SELECT 1 FROM products WHERE sku = $1 FOR UPDATE", sku)
    return connection


async def _waiting_on_lock(database_url: str) -> int:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    finally:
        await connection.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_killed_mid_request_leaves_nothing_and_the_retry_orders_once(
    postgres_url: str, tmp_path: Path
) -> None:
    pairs = inbound_form("ORDER 3 x RICE-5KG")

    async def crash_mid_request() -> None:
        lock = await _hold_product_lock(postgres_url, "RICE-5KG")
        try:
            with running_server(
                postgres_url, tmp_path / "first.log", WHATSORDER_IDEMPOTENCY_WAIT_SECONDS="30"
            ) as server:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                    request = asyncio.create_task(
                        client.post(
                            INBOUND_PATH,
                            content=encode(pairs),
                            headers=signed_headers(INBOUND_PATH, pairs),
                        )
                    )
                    # The request has claimed its key, registered the retailer and now waits
                    # to take the stock: it is in the middle of its transaction.
                    deadline = time.monotonic() + 10
                    while await _waiting_on_lock(postgres_url) == 0:
                        assert time.monotonic() < deadline, "the request never reached the lock"
                        await asyncio.sleep(0.05)
                    os.killpg(server.process.pid, signal.SIGKILL)
                    server.process.wait(timeout=10)
                    with pytest.raises(httpx.HTTPError):
                        await request
        finally:
            await lock.execute("ROLLBACK")
            await lock.close()

    asyncio.run(crash_mid_request())

    async def state_now() -> Snapshot:
        engine = open_database(postgres_url)
        try:
            return await snapshot(engine)
        finally:
            await engine.dispose()

    after_crash = asyncio.run(state_now())
    assert after_crash.idempotency_records == 0
    assert after_crash.retailers == 0
    assert after_crash.orders == 0

    with running_server(postgres_url, tmp_path / "second.log") as server:
        headers = signed_headers(INBOUND_PATH, pairs)
        retry = httpx.post(server.base_url + INBOUND_PATH, content=encode(pairs), headers=headers)
        again = httpx.post(server.base_url + INBOUND_PATH, content=encode(pairs), headers=headers)

    assert retry.status_code == 200
    assert "Order ORD-" in reply_text(retry)
    assert "idempotent-replayed" not in retry.headers
    assert again.headers["idempotent-replayed"] == "true"
    final = asyncio.run(state_now())
    assert (final.orders, final.ledger_entries, final.idempotency_records) == (1, 1, 1)
    assert final.stock["RICE-5KG"] == STOCK["RICE-5KG"] - 3
