"""The database's failures as the engine's outcomes: busy, unavailable, or a race to rerun."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency.errors import StoreBusy, StoreUnavailable, TransactionConflict

PG_LOCK_NOT_AVAILABLE = "55P03"
PG_CONNECTION_CLASS = "08"
# Operator intervention: the server is shutting down, starting up or recovering (57P01-57P03),
# or ended our session. A retry after it is back succeeds; 57014 (a cancelled query) is not it.
PG_OPERATOR_CLASS = "57"
PG_QUERY_CANCELED = "57014"
# The session ended: shut down by an administrator or a crash, database dropped, idle timeout.
PG_SESSION_ENDED = "57P"
PG_TOO_MANY_CONNECTIONS = "53300"
# Races a transaction can lose and win on a second run, because the loser is rolled back whole:
# a deadlock, a serialization failure, and a unique key that a concurrent transaction committed
# first (the rerun sees its row). On SQLite writers take turns, so none of these is a race there.
PG_RERUNNABLE = {
    "40P01": "The transaction deadlocked with another one.",
    "40001": "The transaction could not be serialized with another one.",
    "23505": "A concurrent transaction took the same unique key first.",
}
# Connections come free more slowly than locks: the store's own Retry-After for an exhausted
# pool. Busy outcomes without an estimate get the engine's configured one.
NO_CONNECTION_RETRY_AFTER = 2


@contextmanager
def store_errors() -> Iterator[None]:
    """The database's failures as the engine's outcomes: busy (503), unavailable (503)."""
    try:
        yield
    except sa_exc.TimeoutError as error:  # the connection pool stayed empty
        raise StoreBusy(
            "No database connection was free in time.", retry_after=NO_CONNECTION_RETRY_AFTER
        ) from error
    except sa_exc.DBAPIError as error:
        raise _classify(error) from error
    except OSError as error:  # refused or unreachable before the driver could say more
        raise StoreUnavailable("The database cannot be reached.") from error


def _classify(error: sa_exc.DBAPIError) -> Exception:
    """Turn the database's way of saying "not now" into outcomes; anything else stays itself."""
    code = sqlstate(error) or ""
    if code == PG_LOCK_NOT_AVAILABLE:
        return StoreBusy("A database lock was not granted in time.")
    if code in PG_RERUNNABLE:
        return TransactionConflict(PG_RERUNNABLE[code])
    if code == PG_TOO_MANY_CONNECTIONS:
        return StoreBusy(
            "The database has no connection free.", retry_after=NO_CONNECTION_RETRY_AFTER
        )
    if code.startswith(PG_OPERATOR_CLASS) and code != PG_QUERY_CANCELED:
        return StoreUnavailable("The database is shutting down or starting up.")
    if error.connection_invalidated or code.startswith(PG_CONNECTION_CLASS):
        return StoreUnavailable("The database connection was lost.")
    message = str(error.orig).lower()
    if "database is locked" in message or "database is busy" in message:
        return StoreBusy("The database was busy with other writes.")
    if isinstance(error, sa_exc.OperationalError) and (
        "connect" in message or "refused" in message
    ):
        return StoreUnavailable("The database cannot be reached.")
    return error


def connection_lost(error: sa_exc.DBAPIError) -> bool:
    """Whether ``error`` says the connection itself died (not the statement): SQLAlchemy saw a
    disconnect and invalidated it, or the server said the session ended (class 08, 57P0x)."""
    code = sqlstate(error) or ""
    return bool(
        error.connection_invalidated
        or code.startswith(PG_CONNECTION_CLASS)
        or code.startswith(PG_SESSION_ENDED)
    )


def sqlstate(error: sa_exc.DBAPIError) -> str | None:
    """The SQLSTATE of a PostgreSQL error, whichever driver raised it."""
    original: Any = error.orig
    for candidate in (original, getattr(original, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None


async def on_the_driver(connection: AsyncConnection, method: str, sql: str, *arguments: Any) -> Any:
    """``method`` of asyncpg's own connection under ``connection`` (``fetchrow``, ``execute``…),
    run past SQLAlchemy; its errors as SQLAlchemy's (``driver_error``). A statement cancelled
    on its way is asyncpg's to clean up: it cancels it at the server before the connection is
    used again (engine/tests/test_dead_connections.py checks the pool after such a cancel)."""
    raw: Any = (await connection.get_raw_connection()).driver_connection
    try:
        return await getattr(raw, method)(sql, *arguments)
    except Exception as error:
        raise driver_error(error, sql) from error


def driver_error(error: Exception, sql: str) -> Exception:
    """An error asyncpg raised, run by us past SQLAlchemy, as SQLAlchemy's: its SQLSTATE kept
    (``sqlstate`` reads it), and a connection that died marked as invalidated, so that
    ``store_errors`` and ``connection_lost`` know it as they know SQLAlchemy's own."""
    code = str(getattr(error, "sqlstate", "") or "")
    died = isinstance(error, _asyncpg_connection_errors()) or code.startswith(("08", "57P"))
    if not died and not code:
        return error  # not the database's failure (a bug of ours): stays itself
    return sa_exc.DBAPIError(sql, None, error, connection_invalidated=died)


def _asyncpg_connection_errors() -> tuple[type[BaseException], ...]:
    import asyncpg  # type: ignore[import-untyped]  # only ever called where asyncpg runs

    # InternalClientError: the connection is in a state it cannot go on from (asyncpg says
    # "cannot switch to state …; another operation is in progress").
    return (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class RetryOnFreshConnection(Exception):
    """The connection died before any work was done on it: do it again on a fresh one."""
