"""Fixtures of the deployment tests: one PostgreSQL database and a TLS proxy over three replicas.

The cluster is shared by the tests of a module (starting three replicas costs seconds of a
two-core machine); each test works on messages of its own and says so where it counts totals.
Without nginx, openssl or curl these tests skip with a message, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from deploy.cluster import (
    CLEANUP_BATCH_SIZE,
    CLEANUP_EVERY_SECOND,
    GRACEFUL_TIMEOUT_SECONDS,
    Cluster,
    Replica,
    nginx_binary,
    replica_env,
    running_nginx,
    self_signed_certificate,
)
from support import free_port

POSTGRES_URL = os.environ.get(
    "WHATSORDER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _admin(sql: str, database: str | None = None) -> None:
    url = make_url(POSTGRES_URL).set(drivername="postgresql")
    dsn = (url if database is None else url.set(database=database)).render_as_string(False)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def shared_postgres_url(postgres_template: str) -> Iterator[str]:
    """A migrated, seeded PostgreSQL database for the whole module."""
    name = f"whatsorder_deploy_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    url = make_url(POSTGRES_URL).set(database=name)
    try:
        # Stock for thousands of orders: an order refused for stock would look like a lost one.
        asyncio.run(
            _admin(
                "UPDATE products SET initial_stock = initial_stock + 1000000,"
                " stock = stock + 1000000",
                database=name,
            )
        )
        yield url.render_as_string(False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def cluster(
    shared_postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    nginx_binary()  # skip (or fail under CI) before starting anything
    directory = tmp_path_factory.mktemp("cluster")
    certificate, key = self_signed_certificate(directory)
    ports = [free_port() for _ in range(3)]
    nginx_port = free_port()
    public_url = f"https://127.0.0.1:{nginx_port}"
    env = replica_env(
        shared_postgres_url,
        public_url,
        WHATSORDER_CLEANUP_SCHEDULE=CLEANUP_EVERY_SECOND,
        WHATSORDER_CLEANUP_BATCH_SIZE=str(CLEANUP_BATCH_SIZE),
        WHATSORDER_GRACEFUL_TIMEOUT_SECONDS=str(GRACEFUL_TIMEOUT_SECONDS),
    )
    replicas = [Replica(port, env, directory) for port in ports]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        with running_nginx(directory, ports, certificate, key, port=nginx_port) as nginx:
            assert nginx.url == public_url
            yield Cluster(public_url, certificate, nginx, replicas, shared_postgres_url, directory)
    finally:
        for replica in replicas:
            replica.stop()
