"""The PostgreSQL store's own pool (driver_pool.py): it connects as the engine's URL says,
stands aside for an engine that holds no pool to match, and closes apart from the engine."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from whatsorder_idempotency import IdempotentRequest, SqlStore, idempotency_table, sql_engine
from whatsorder_idempotency.record import Status, StoredResponse, utcnow
from whatsorder_idempotency.stores.base import Claimed

pytestmark = pytest.mark.postgres

LEASE = timedelta(seconds=30)
TTL = timedelta(hours=1)


def async_url(postgres_url: str) -> str:
    return postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def first_request_and_replay(store: SqlStore, key: str) -> None:
    """A lease's claim, completion and replay: each a statement of the store's own."""
    request = IdempotentRequest("orders", key, "f")
    claimed = await store.claim(request, utcnow(), LEASE, TTL)
    assert isinstance(claimed, Claimed)
    answer = StoredResponse.build(201, b'{"id":1}', {})
    assert await store.complete(request, claimed.epoch, answer, utcnow(), TTL)
    found = await store.claim(request, utcnow(), LEASE, TTL)
    assert not isinstance(found, Claimed)
    assert found.status is Status.COMPLETED


@pytest.mark.parametrize(
    "query",
    [
        "?ssl=disable",  # SQLAlchemy gives asyncpg.connect its ssl argument
        "?prepared_statement_cache_size=0",  # SQLAlchemy's own (pgbouncer), not the server's
        "?command_timeout=30",
    ],
)
async def test_the_stores_pool_connects_with_the_engines_url_arguments(
    postgres_url: str, query: str
) -> None:
    store = SqlStore(
        sql_engine(postgres_url + query), idempotency_table(MetaData()), create_table=True
    )
    try:
        await first_request_and_replay(store, f"k{query}")
        assert store._driver_pool is not None
        assert store._driver_pool.open_connections >= 1, "the statements ran there"
    finally:
        await store.close()


async def test_an_engine_without_a_sized_pool_keeps_every_statement_on_it(
    postgres_url: str,
) -> None:
    engine = create_async_engine(async_url(postgres_url), poolclass=NullPool)
    store = SqlStore(engine, idempotency_table(MetaData()), create_table=True)
    try:
        assert store._driver_pool is None
        await first_request_and_replay(store, "k-nullpool")
    finally:
        await store.close()


async def test_closing_the_stores_own_connections_leaves_the_engine_to_its_application(
    postgres_url: str,
) -> None:
    engine = sql_engine(postgres_url)
    store = SqlStore(engine, idempotency_table(MetaData()), create_table=True)
    await first_request_and_replay(store, "k-shared")
    watcher = await asyncpg.connect(postgres_url)
    try:
        count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        before = await watcher.fetchval(count)
        await store.close_own_connections()
        assert await watcher.fetchval(count) < before, "the store's own pool was closed"
        async with engine.connect() as connection:  # the application's engine still works
            assert await connection.scalar(text("SELECT 1")) == 1
        await first_request_and_replay(store, "k-reopened")  # and the store opens it again
    finally:
        await watcher.close()
        await store.close()
