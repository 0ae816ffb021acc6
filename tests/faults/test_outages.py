"""Dependencies going away under load: quick 503s meanwhile, and every retry takes effect once.

PostgreSQL is a cluster of the suite's own (``faults.pg_cluster``), stopped and started with
``pg_ctl``; Redis is a ``redis-server`` of its own on a spare port. The shared servers are
never touched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from conftest import make_settings
from faults.books import audit, check_books, restock
from faults.harness import provider_secrets
from faults.modes import scaled
from faults.pg_cluster import PostgresCluster
from faults.provider import Provider, Shop, Tally
from support import (
    INBOUND_PATH,
    app_client,
    assert_problem,
    encode,
    inbound_form,
    running_server,
    signed_headers,
)
from whatsorder.web.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def test_a_database_shutting_down_answers_503_and_keeps_nothing(
    private_postgres: PostgresCluster, private_database: str
) -> None:
    """While PostgreSQL shuts down it refuses new sessions ("the database system is shutting
    down", SQLSTATE 57P03): the provider must get a 503 to retry, never a 500."""
    held = await asyncpg.connect(private_database)  # a smart shutdown waits for this session
    try:
        private_postgres.stop("smart", wait=False)
        await private_postgres.until_shutting_down()
        pairs = inbound_form("ORDER 1 x ATTA-5KG")
        async with app_client(create_app(make_settings(private_database))) as client:
            response = await client.post(
                INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
            )
        assert_problem(response, 503, "store-unavailable")
        assert response.headers["retry-after"]
    finally:
        await held.close()
        private_postgres.wait_stopped()
        private_postgres.start()
    orders = await _count(private_database, "orders")
    assert orders == 0


async def _count(database_url: str, table: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    finally:
        await connection.close()


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
    assert await _count(private_database, "orders") == 0


OUTAGES = ("fast", "immediate", "fast", "immediate")[: scaled(1, 4)]
OUTAGE_SECONDS = scaled(3, 6)
QUICK_ANSWER = 5.0  # seconds: well inside Twilio's 15 s, "a few seconds"


def _during(tally: Tally, windows: list[tuple[float, float]]) -> list[tuple[float, str]]:
    """(seconds taken, answer) of the attempts sent while the dependency was down."""
    return [
        (took, answer)
        for sent, took, answer in tally.timeline
        if any(start <= sent <= end for start, end in windows)
    ]


def _assert_outage_handled(tally: Tally, during: list[tuple[float, str]]) -> None:
    assert tally.answers["500"] == 0, f"500s reached the provider: {tally.bodies}"
    assert tally.answers["timeout"] == 0, "an attempt hung past the provider's timeout"
    assert not tally.refused, tally.refused[:3]
    assert not tally.unanswered, f"{len(tally.unanswered)} deliveries never acknowledged"
    refusals = [answer for _took, answer in during if answer != "200"]
    assert refusals, "no request met the outage"
    assert set(refusals) <= {"503", "409"}, f"answers during the outage: {set(refusals)}"
    slowest = max(took for took, _answer in during)
    assert slowest < QUICK_ANSWER, f"an answer during the outage took {slowest:.1f} s"


def _outage_report(title: str, tally: Tally, during: list[tuple[float, str]], shop: Shop) -> str:
    refused = sorted(took for took, answer in during if answer in {"503", "409"})
    p99 = refused[min(len(refused) - 1, int(0.99 * len(refused)))] if refused else 0.0
    return (
        f"\n{title}: {shop.customers} customers, {tally.deliveries} deliveries, "
        f"{tally.attempts} attempts ({tally.retries} retries); {len(refused)} answered 503/409 "
        f"during the outages (max {max(refused, default=0):.3f} s, p99 {p99:.3f} s); "
        f"answers {dict(tally.answers)}; kinds {dict(tally.bodies)}"
    )


def test_postgres_stopped_and_restarted_under_load_loses_and_duplicates_nothing(
    private_postgres: PostgresCluster, private_database: str, tmp_path: Path
) -> None:
    asyncio.run(restock(private_database, 100_000))
    windows: list[tuple[float, float]] = []

    async def outages() -> None:
        for mode in OUTAGES:
            await asyncio.sleep(1.5)
            start = time.monotonic()
            await asyncio.to_thread(private_postgres.stop, mode)
            await asyncio.sleep(OUTAGE_SECONDS)
            windows.append((start, time.monotonic()))
            await asyncio.to_thread(private_postgres.start)
        await asyncio.sleep(1.5)

    with running_server(
        private_database,
        tmp_path / "server.log",
        workers=2,
        WHATSORDER_DB_POOL_SIZE="4",
        WHATSORDER_DB_MAX_OVERFLOW="4",
        **provider_secrets(),
    ) as server:

        async def traffic() -> Shop:
            async with Provider(server.base_url, give_up_after=60) as provider:
                shop = Shop(provider)
                down = asyncio.create_task(outages())
                await shop.run(customers=100_000, concurrency=6, seconds=120, enough=down.done)
                await down
                return shop

        shop = asyncio.run(traffic())

    tally = shop.provider.tally
    during = _during(tally, windows)
    print(_outage_report(f"PostgreSQL outages {OUTAGES}", tally, during, shop))
    _assert_outage_handled(tally, during)
    assert not shop.expected.wrong_replies, shop.expected.wrong_replies[:3]
    problems = check_books(private_database, shop.expected)
    assert not problems, "\n".join(problems[:20])
    checked = audit(private_database)
    assert checked.returncode == 0, checked.stdout + checked.stderr
