"""A duplicate storm against an exhausted connection pool: quick 409s and 503s, one order.

The webhooks' waits are bounded: for a pooled connection (``WHATSORDER_DB_POOL_TIMEOUT_SECONDS``)
and for the first copy of a duplicate (``WHATSORDER_IDEMPOTENCY_WAIT_SECONDS``), which share
one budget, so that a storm is answered before the provider gives up, never left to time out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from conftest import make_settings
from faults.books import count_rows
from faults.harness import provider_secrets
from faults.modes import report
from faults.pg_cluster import PostgresCluster
from faults.provider import TWILIO_TIMEOUT, Delivery, Provider, Tally
from support import (
    INBOUND_PATH,
    app_client,
    assert_problem,
    encode,
    free_port,
    inbound_form,
    running_server,
    signed_headers,
)
from whatsorder.db.tables import webhook_idempotency
from whatsorder.web.app import create_app
from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyEngine,
    IdempotentRequest,
    RequestInFlight,
    SqlStore,
    sql_engine,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def test_a_database_out_of_connections_answers_503_and_keeps_nothing(
    private_postgres: PostgresCluster, private_database: str
) -> None:
    """ "Too many connections" (SQLSTATE 53300) is the database being busy: 503, never 500."""
    database = private_database.rsplit("/", 1)[1]
    for statement in (
        "CREATE ROLE shop LOGIN",
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO shop",
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO shop",
        f'ALTER DATABASE "{database}" CONNECTION LIMIT 1',
    ):
        await private_postgres.execute(statement, database)
    shop_url = private_database.replace("postgres@", "shop@")
    held = await asyncpg.connect(shop_url)  # the one connection the database allows
    try:
        pairs = inbound_form("ORDER 1 x ATTA-5KG")
        async with app_client(create_app(make_settings(shop_url))) as client:
            response = await client.post(
                INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
            )
        assert_problem(response, 503, "store-busy")
    finally:
        await held.close()
    assert await count_rows(private_database, "orders") == 0


async def test_time_spent_waiting_for_a_connection_comes_out_of_the_in_flight_wait(
    private_database: str,
) -> None:
    """A duplicate that waited for a pooled connection has only the rest of its in-flight wait
    left for the first copy's lock: the two waits never add up past the provider's patience."""
    wait = timedelta(seconds=3)
    engine = sql_engine(private_database, pool_size=1, max_overflow=0, pool_timeout=10)
    store = SqlStore(engine, webhook_idempotency, in_flight_wait=wait)
    idempotency = IdempotencyEngine[AsyncConnection](store)
    request = IdempotentRequest("twilio_inbound", "SM-held-elsewhere", "f" * 64)
    first_copy = await asyncpg.connect(private_database)  # holds the claim, uncommitted
    await first_copy.execute("BEGIN")
    await first_copy.execute(
        "INSERT INTO webhook_idempotency (webhook_type, idempotency_key, fingerprint, status,"
        " epoch, locked_until, created_at) VALUES ($1, $2, $3, 'in_progress', 1, now(), now())",
        request.scope,
        request.key,
        request.fingerprint,
    )

    async def busy_pool() -> None:  # the pool's only connection, busy for 2.5 s
        async with store.transaction():
            await asyncio.sleep(2.5)

    async def never_runs(_connection: AsyncConnection) -> HandlerResult:
        raise AssertionError("the duplicate must not run")

    try:
        holder = asyncio.create_task(busy_pool())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(RequestInFlight):
            await idempotency.execute(request, never_runs)
        took = time.monotonic() - started
        await holder
    finally:
        await first_copy.execute("ROLLBACK")
        await first_copy.close()
        await engine.dispose()
    assert 2.4 < took < wait.total_seconds() + 0.5, f"answered after {took:.2f} s"


STORM = 1000
RETRIED_COPIES = 50


def _raw_request(port: int, delivery: Delivery) -> bytes:
    """The request's bytes, signed once: every copy of a Twilio retry is byte-identical."""
    headers = {
        "Host": f"127.0.0.1:{port}",
        **delivery.sign(),
        "Content-Length": str(len(delivery.body)),
        "Connection": "close",
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {delivery.path} HTTP/1.1\r\n{head}\r\n".encode() + delivery.body


async def _raw_attempt(port: int, request: bytes) -> tuple[str, float]:
    """One copy over its own connection: its status (or why none came), and how long it took.

    Raw sockets, not httpx: a thousand httpx requests cost the client seconds of CPU on this
    machine, which would be counted against the server."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(TWILIO_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError:
        return "timeout", time.monotonic() - started
    except OSError:
        return "connection", time.monotonic() - started
    parts = status_line.split()
    return (parts[1].decode() if len(parts) > 1 else "closed"), time.monotonic() - started


async def _hold_stock_lock(database_url: str, sku: str) -> asyncpg.Connection:
    """Lock a product row from outside: the order taking that stock stalls mid-transaction,
    holding its claim (and its pooled connection) while every copy of it piles up behind."""
    connection = await asyncpg.connect(database_url)
    await connection.execute("BEGIN")
    await connection.execute("SELECT 1 FROM products WHERE sku = $1 FOR UPDATE", sku)
    return connection


def test_a_thousand_duplicates_exhausting_the_pool_get_409_or_503_fast_then_one_order(
    private_database: str, tmp_path: Path
) -> None:
    """1,000 copies of one message at once against 2 workers with 2 connections each, while
    the first copy is stalled: each copy is answered (409 or 503) before Twilio's 15 s are up,
    none left to time out; once the first copy finishes, every retry replays its order."""
    pairs = inbound_form("ORDER 2 x RICE-5KG")
    delivery = Delivery(
        "twilio", "storm", INBOUND_PATH, encode(pairs), lambda: signed_headers(INBOUND_PATH, pairs)
    )
    port = free_port()
    with running_server(
        private_database,
        tmp_path / "server.log",
        workers=2,
        port=port,
        WHATSORDER_DB_POOL_SIZE="2",
        WHATSORDER_DB_MAX_OVERFLOW="0",
        **provider_secrets(),
    ) as server:

        async def storm() -> tuple[list[tuple[str, float]], Tally]:
            lock = await _hold_stock_lock(private_database, "RICE-5KG")
            try:
                request = _raw_request(port, delivery)
                answers = await asyncio.gather(*(_raw_attempt(port, request) for _ in range(STORM)))
            finally:
                await lock.execute("ROLLBACK")
                await lock.close()
            async with Provider(server.base_url, connections=50) as retrier:
                gate = asyncio.Semaphore(50)

                async def retry() -> None:
                    async with gate:
                        assert await retrier.deliver(delivery) is not None

                # The provider retries what it did not get a 200 for (a sample: one message).
                refused = [status for status, _took in answers if status != "200"]
                await asyncio.gather(*(retry() for _ in refused[:RETRIED_COPIES]))
                return answers, retrier.tally

        answers, retries = asyncio.run(storm())

    statuses = Counter(status for status, _took in answers)
    took = sorted(seconds for _status, seconds in answers)
    report(
        f"\n{STORM} duplicates, pool exhausted: {dict(statuses)}; answered in p50 "
        f"{took[len(took) // 2]:.1f} s, p99 {took[int(0.99 * len(took))]:.1f} s, "
        f"max {took[-1]:.1f} s; the retries: {dict(retries.answers)}"
    )
    assert set(statuses) <= {"200", "409", "503"}, statuses
    assert asyncio.run(count_rows(private_database, "orders")) == 1
