"""Fixtures: real databases (SQLite files, PostgreSQL databases of their own) and the app.

PostgreSQL tests use WHATSORDER_TEST_POSTGRES_URL (default: the local server's ``test``
database, used only to create and drop databases of their own). Under CI=true a missing
PostgreSQL fails those tests; elsewhere they are skipped with a message saying how to run them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from support import ADMIN_TOKEN, PUBLIC_URL, TWILIO_TOKEN
from whatsorder.db import migrate
from whatsorder.db.engine import open_database
from whatsorder.db.seed import seed_demo
from whatsorder.settings import Settings
from whatsorder.web.app import create_app

POSTGRES_URL = os.environ.get(
    "WHATSORDER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEMPLATE = f"whatsorder_template_{os.getpid()}"


def _admin_dsn() -> str:
    return make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(False)


def _database_url(name: str) -> str:
    return make_url(POSTGRES_URL).set(database=name).render_as_string(False)


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(_admin_dsn(), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _require_postgres() -> None:
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        message = (
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({error}). "
            "Start it or set WHATSORDER_TEST_POSTGRES_URL to run these tests."
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated and seeded database that each test's database is copied from."""
    _require_postgres()
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{TEMPLATE}"'))
    asyncio.run(_admin(f'CREATE DATABASE "{TEMPLATE}"'))
    url = _database_url(TEMPLATE)
    migrate.upgrade(url)
    asyncio.run(seed_demo(url))
    yield TEMPLATE
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "whatsorder.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    asyncio.run(seed_demo(url))
    return path


def fresh_postgres_database(template: str) -> Iterator[str]:
    name = f"whatsorder_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _database_url(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database with the demo catalogue, new for each test, on each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "whatsorder.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
    else:
        yield from fresh_postgres_database(request.getfixturevalue("postgres_template"))


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh, migrated, seeded PostgreSQL database (for tests that need PostgreSQL itself)."""
    yield from fresh_postgres_database(postgres_template)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "twilio_auth_token": TWILIO_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "public_url": PUBLIC_URL,
        "require_https": True,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def app_factory(database_url: str) -> Callable[..., FastAPI]:
    """``app_factory(**settings)``: the app on this test's database with settings changed."""

    def build(**overrides: Any) -> FastAPI:
        return create_app(make_settings(overrides.pop("database_url", database_url), **overrides))

    return build


@pytest.fixture
async def app(app_factory: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    application = app_factory()
    yield application
    await application.state.runtime.close()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTPS client for the app, in process (no sockets)."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        yield http


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A separate engine on the test's database, for checking what was written."""
    engine = open_database(database_url)
    yield engine
    await engine.dispose()


REDIS_URL = os.environ.get("WHATSORDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis; tests namespace their keys and let them expire."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        message = (
            f"Redis at {REDIS_URL} is not reachable ({error}). "
            "Start redis-server or set WHATSORDER_TEST_REDIS_URL to run these tests."
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()
    return REDIS_URL
