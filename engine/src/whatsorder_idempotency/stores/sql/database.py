"""The SQL engine the store runs on: asyncio drivers, and SQLite made fit for claims."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from whatsorder_idempotency.stores.sql.errors import RetryOnFreshConnection, connection_lost

# SQLite: skip BEGIN IMMEDIATE for a lone statement (a read, or a claim or compare-and-set
# that is atomic on its own): SQLite runs it as a transaction of its own.
AUTOCOMMIT_OPTION = "idempotency_autocommit"


def async_url(url: str) -> str:
    """``sqlite:///…`` and ``postgresql://…`` with the asyncio drivers this package uses."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    drivers = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
    if backend not in drivers:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")
    return parsed.set(drivername=f"{backend}+{drivers[backend]}").render_as_string(
        hide_password=False
    )


def sql_engine(
    url: str,
    *,
    busy_timeout: timedelta = timedelta(seconds=5),
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
) -> AsyncEngine:
    """An engine fit for claims: WAL, ``busy_timeout`` and ``BEGIN IMMEDIATE`` on SQLite; on
    PostgreSQL, pooled connections the driver knows are closed are replaced at checkout."""
    full_url = async_url(url)
    if make_url(full_url).get_backend_name() == "sqlite":
        # The pool's size counts on SQLite too: each aiosqlite connection is a thread, and 15
        # of them contending for the GIL cut replays' throughput by a fifth against 5 (bench).
        engine = create_async_engine(
            full_url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
        )
        _make_sqlite_transactions_immediate(engine, busy_timeout)
        return engine
    engine = create_async_engine(
        full_url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
    )
    _replace_closed_connections_at_checkout(engine)
    return engine


def _replace_closed_connections_at_checkout(engine: AsyncEngine) -> None:
    # No pre-ping: it costs every checkout a round trip (a replay would take two instead of
    # one). A connection the server ended (a restart, pg_terminate_backend, an idle timeout)
    # has told the driver so: asyncpg read the FATAL and the close while the connection sat in
    # the pool, and ``is_closed()`` says so without a round trip. Such a connection is swapped
    # for a fresh one here, before anything could have been sent on it, which makes that swap
    # safe for every kind of work, the application's own transactions included: raising
    # DisconnectionError in the pool's checkout event is SQLAlchemy's way to have the pool
    # reconnect (it tries again on a new connection). A death the driver has not noticed yet
    # is found on use; the SQL store then retries what is safe to retry (stores/sql/store.py).
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise sa_exc.DisconnectionError("The pooled connection was closed by the server.")


def _make_sqlite_transactions_immediate(engine: AsyncEngine, busy_timeout: timedelta) -> None:
    # pysqlite begins transactions lazily and never as IMMEDIATE; a deferred transaction that
    # reads and then writes can fail with "database is locked" without waiting. So the driver's
    # own transaction handling is switched off and every transaction begins IMMEDIATE
    # (the recipe of SQLAlchemy's SQLite dialect documentation).
    timeout_ms = int(busy_timeout.total_seconds() * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(AUTOCOMMIT_OPTION):
            return  # a lone statement: SQLite runs it as a transaction of its own
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# What a request that spent its whole wait on the pool still gets for row locks (ms).
MIN_LOCK_WAIT_MS = 500


def autocommit_options(kind: str) -> dict[str, Any]:
    """Execution options for a lone statement: no BEGIN around it."""
    if kind == "postgresql":
        return {"isolation_level": "AUTOCOMMIT"}
    return {AUTOCOMMIT_OPTION: True}


def transactional_options(connection: AsyncConnection, prior: str | None) -> dict[str, Any]:
    """Execution options that give ``connection`` back its transactions (``prior`` level)."""
    if connection.dialect.name == "postgresql":
        default = connection.sync_connection.default_isolation_level  # type: ignore[union-attr]
        return {"isolation_level": prior or default}
    return {AUTOCOMMIT_OPTION: False}


def lock_wait_left(asked: float, timeout_ms: int) -> int:
    """The wait (ms) not yet spent getting a pooled connection since ``asked`` (monotonic): in
    a storm the two waits would otherwise add up past the provider's timeout."""
    spent = int((time.monotonic() - asked) * 1000)
    return max(min(MIN_LOCK_WAIT_MS, timeout_ms), timeout_ms - spent)


async def set_lock_timeout(
    connection: AsyncConnection, asked: float, timeout_ms: int, attempt: int
) -> None:
    """Bound how long a duplicate waits on the first copy's claim (docs/architecture.md §3).

    The transaction's first statement (asyncpg sends the BEGIN with it): if the connection
    turns out dead here, nothing was done in the transaction, so on the first attempt it is
    begun again once on a fresh connection (``RetryOnFreshConnection``).
    """
    try:
        await connection.exec_driver_sql(
            f"SET LOCAL lock_timeout = {lock_wait_left(asked, timeout_ms)}"
        )
    except sa_exc.DBAPIError as error:
        if attempt == 1 and connection_lost(error):
            await connection.invalidate()
            raise RetryOnFreshConnection from error
        raise
