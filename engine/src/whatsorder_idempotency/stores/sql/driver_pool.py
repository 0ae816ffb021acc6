"""PostgreSQL connections of the store's own, for the statements that run alone.

A replay's read and a lease's claim and completion are each one statement in autocommit,
already compiled once and run by asyncpg itself (reads.py, lone.py). Profiled
(docs/benchmarks.md, "Where the time goes"), what was left of SQLAlchemy around them was its
pool: a checkout and a return for each statement (a greenlet, the pool's queue, its events and
the reset on return), which cost a first request three times. So these statements take their
connections from a small pool of the store's own (``DriverPool``, below); transactions (the
application's, a take-over's) stay on SQLAlchemy's.

The pool keeps SQLAlchemy's promises: a connection the server closed while it sat idle is
replaced when it is handed out (asyncpg's ``is_closed()``), no statement is sent to ping, and
nothing is sent on its return (the statements leave no session state to reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder_idempotency.stores.sql.errors import connection_lost, driver_error


@functools.cache  # one class for every connection
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
CLOSE_PATIENCE = 5.0  # seconds a connection is given to say goodbye before it is cut


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
    """asyncpg connections of the store's own, as many as the engine's pool (without its
    overflow), opened as they are first needed.

    Not asyncpg's own pool: measured on this machine, its checkout and return cost 54 µs of
    CPU (a timeout, a task and a reset on each), more than the replay's statement itself
    (40 µs). These connections only ever run one statement in autocommit and leave no session
    state behind, so a checkout here is a slot and a list's last item, and a return puts it
    back; a connection whose statement failed in any way (an error, a cancellation mid-flight)
    is closed instead, so no half-finished exchange reaches the next statement.
    """

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
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Any] = []  # connections ready for a statement, the latest used last
        self._generation = 0  # raised when the server ended connections: older ones go
        self._born: dict[Any, int] = {}  # every open connection, in use or idle: its generation
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

    @property
    def open_connections(self) -> int:
        """Connections open now, in use or idle."""
        return len(self._born)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection for one statement; closed instead of kept if the block fails."""
        connection = await self._checkout()
        try:
            yield connection
        except BaseException:
            self._discard(connection)
            raise
        else:
            self._give_back(connection)

    async def _checkout(self) -> Any:
        if self._slots.locked():  # every connection in use: wait for one, for a while
            try:
                async with asyncio.timeout(self._timeout):
                    await self._slots.acquire()
            except TimeoutError as error:
                raise sa_exc.TimeoutError("No database connection was free in time.") from error
        else:
            await self._slots.acquire()  # a free slot: returns without suspending
        try:
            while self._idle:
                connection = self._idle.pop()
                # Closed while idle (the server ended it): replaced, as SQLAlchemy's pool does.
                if not connection.is_closed() and self._born[connection] == self._generation:
                    return connection
                self._discard(connection, slot=False)
            return await self._connect()
        except BaseException:
            self._slots.release()
            raise

    async def _connect(self) -> Any:
        import asyncpg  # only where the store runs on asyncpg

        try:
            connection = await asyncpg.connect(
                **self._arguments, connection_class=_connection_class()
            )
        except Exception as error:
            raise driver_error(error, "connect") from error
        self._born[connection] = self._generation
        return connection

    def _give_back(self, connection: Any) -> None:
        if connection.is_closed() or self._born.get(connection) != self._generation:
            self._discard(connection)
            return
        self._idle.append(connection)
        self._slots.release()

    def _discard(self, connection: Any, *, slot: bool = True) -> None:
        self._born.pop(connection, None)
        _terminate(connection)
        if slot:
            self._slots.release()

    async def run(self, method: str, sql: str, *arguments: Any, again: bool = False) -> Any:
        """``method`` (``fetchrow``, ``execute``, ``fetch``) of a pooled connection; its errors as
        SQLAlchemy's (errors.py). With ``again``, a statement that found its connection dead
        runs once more on a fresh one: only for a read, which changes nothing."""
        for attempt in (1, 2):
            try:
                async with self.connection() as connection:
                    return await getattr(connection, method)(sql, *arguments)
            except Exception as error:
                if isinstance(error, sa_exc.SQLAlchemyError):  # the checkout's own
                    raise
                failure = driver_error(error, sql)
                if not isinstance(failure, sa_exc.DBAPIError):
                    raise
                if failure.connection_invalidated:
                    self.found_dead += 1
                    # As SQLAlchemy's pool does on a disconnect: the others were most likely
                    # ended with it (a restart), so each is replaced on its next use, and so
                    # are those of the SQLAlchemy pool the store was given.
                    self._generation += 1
                    await self._on_connection_lost()
                if again and attempt == 1 and connection_lost(failure):
                    continue
                raise failure from error
        raise AssertionError("unreachable")  # the second attempt returned or raised

    async def close(self) -> None:
        """Close the idle connections now, and those in use as they come back (a statement
        after this opens new ones)."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for connection in idle:
            self._born.pop(connection, None)
            try:
                await asyncio.wait_for(connection.close(), CLOSE_PATIENCE)
            except Exception:
                _terminate(connection)


def _terminate(connection: Any) -> None:
    """Close a connection that cannot go on, at once; the pool opens a fresh one in its place."""
    import asyncpg

    with contextlib.suppress(asyncpg.InterfaceError):  # already closed
        connection.terminate()
