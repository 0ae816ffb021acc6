"""Dependencies going away under load: quick 503s meanwhile, and every retry takes effect once.

PostgreSQL is a cluster of the suite's own (``faults.pg_cluster``), stopped and started with
``pg_ctl``; Redis is a ``redis-server`` of its own on a spare port. The shared servers are
never touched.
"""

from __future__ import annotations

import asyncpg
import pytest

from conftest import make_settings
from faults.pg_cluster import PostgresCluster
from support import INBOUND_PATH, app_client, assert_problem, encode, inbound_form, signed_headers
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
