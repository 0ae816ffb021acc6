"""PostgreSQL connections of the store's own, for the statements that run alone.

A replay's read and a lease's claim and completion are each one statement in autocommit,
already compiled once and run by asyncpg itself (reads.py, lone.py). Profiled
(docs/benchmarks.md, "Where the time goes"), what was left of SQLAlchemy around them was its
pool: a checkout and a return for each statement (a greenlet, the pool's queue, its events and
the reset on return), which cost a first request three times. asyncpg's own pool hands out a
connection for a fraction of that, so these statements take theirs from a small pool of the
store's own; transactions (the application's, a take-over's) stay on SQLAlchemy's.

The pool keeps SQLAlchemy's promises: a connection the server closed while it sat idle is
replaced when it is handed out (asyncpg checks ``is_closed()``), no statement is sent to ping,
and nothing is sent on its return (the statements leave no session state to reset).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder_idempotency.stores.sql.errors import connection_lost, driver_error


def _connection_class() -> type[Any]:
    import asyncpg  # type: ignore[import-untyped]  # only where the store runs on asyncpg

    class NothingToReset(asyncpg.Connection):  # type: ignore[misc]
        def get_reset_query(self) -> str:
            return ""  # asyncpg's default costs each return a round trip (RESET ALL, …)

    return NothingToReset


# SQLAlchemy's own arguments in a URL's query, which its asyncpg dialect takes off before it
# calls asyncpg.connect; the rest of the query goes to asyncpg as SQLAlchemy gives it.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")
DEFAULT_SIZE = 5  # for an engine whose pool sets no bound (pool_size=0)


def connect_arguments(engine: AsyncEngine) -> dict[str, Any]:
    """asyncpg.connect's arguments for ``engine``'s URL, as SQLAlchemy's dialect makes them
    (so ``?ssl=require`` and the like mean the same to both pools)."""
    _positional, arguments = engine.dialect.create_connect_args(engine.url)
    found = dict(arguments)
    if found.get("prepared_statement_cache_size") == 0:  # said for pgbouncer: no prepares
        found.setdefault("statement_cache_size", 0)
    for name in _SQLALCHEMY_ONLY:
        found.pop(name, None)
    return found


class DriverPool:
    """asyncpg's pool, as big as the engine's (without its overflow), opened on first use."""

    def __init__(
        self,
        arguments: dict[str, Any],
        size: int,
        timeout: float,
        on_connection_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self._arguments = arguments
        self.size = size
        self._timeout = timeout
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self.found_dead = 0  # statements whose connection turned out dead on use
        self._on_connection_lost = on_connection_lost

    @classmethod
    def of(
        cls, engine: AsyncEngine, on_connection_lost: Callable[[], Awaitable[None]]
    ) -> DriverPool | None:
        """The store's own pool beside ``engine``'s, or None where that would go wrong: not
        asyncpg, or a pool with no size to match (NullPool, StaticPool: the caller chose to
        hold no connections, or one)."""
        pool: Any = engine.pool
        if engine.dialect.driver != "asyncpg" or not callable(getattr(pool, "size", None)):
            return None
        size = int(pool.size()) or DEFAULT_SIZE
        return cls(connect_arguments(engine), size, float(pool.timeout()), on_connection_lost)

    async def opened(self) -> Any:
        """asyncpg's pool, opened on first use."""
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    import asyncpg

                    self._pool = await asyncpg.create_pool(
                        **self._arguments,
                        min_size=0,
                        max_size=self.size,
                        connection_class=_connection_class(),
                    )
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[tuple[Any, Any]]:
        pool = await self.opened()
        try:
            connection = await pool.acquire(timeout=self._timeout)
        except TimeoutError as error:  # before OSError: TimeoutError is one
            raise sa_exc.TimeoutError("No database connection was free in time.") from error
        except Exception as error:
            raise driver_error(error, "connect") from error
        try:
            yield pool, connection
        finally:
            # asyncpg ends a connection it cannot hand out again itself; what went wrong is
            # the statement's to say, not the return's.
            with contextlib.suppress(Exception):
                await pool.release(connection)

    async def run(self, method: str, sql: str, *arguments: Any, again: bool = False) -> Any:
        """``method`` (``fetchrow``, ``execute``, ``fetch``) of a pooled connection; its errors as
        SQLAlchemy's (errors.py). With ``again``, a statement that found its connection dead
        runs once more on a fresh one: only for a read, which changes nothing."""
        for attempt in (1, 2):
            async with self._connection() as (pool, connection):
                try:
                    return await getattr(connection, method)(sql, *arguments)
                except Exception as error:
                    failure = driver_error(error, sql)
                    if not isinstance(failure, sa_exc.DBAPIError):
                        raise
                    if failure.connection_invalidated:
                        self.found_dead += 1
                        _terminate(connection)
                        # As SQLAlchemy's pool does on a disconnect: the others were most
                        # likely ended with it (a restart), so each is replaced on its next
                        # use, and so are those of the SQLAlchemy pool the store was given.
                        await pool.expire_connections()
                        await self._on_connection_lost()
                    if again and attempt == 1 and connection_lost(failure):
                        continue
                    raise failure from error
        raise AssertionError("unreachable")  # the second attempt returned or raised

    async def close(self) -> None:
        """Close the pool's connections: those in use are waited for (a statement each)."""
        async with self._opening:  # not while it opens
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _terminate(connection: Any) -> None:
    """Close a connection that cannot go on, so that the pool opens a fresh one in its place.
    One the server closed was already given back to the pool by asyncpg: nothing to do."""
    import asyncpg

    with contextlib.suppress(asyncpg.InterfaceError):  # "released back to the pool"
        connection.terminate()
