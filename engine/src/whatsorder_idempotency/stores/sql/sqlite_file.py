"""Statements on a SQLite file by sqlite3 connections of our own, one per thread.

Through SQLAlchemy and aiosqlite one statement costs several hops to the connection's thread
(cursor, execute, fetch, close, and the pool's rollback on return) and more time building and
wrapping the statement than SQLite spends running it (docs/benchmarks.md, "Where the time
goes"). The engine's own lone statements (a replay's read, a lease's claim and completion) are
compiled once and sent here instead: one hop to a thread each. aiosqlite gives no way to run a
prepared statement in one hop, hence these few lines of our own.

Each statement runs alone in autocommit (``isolation_level=None``): SQLite makes it a
transaction of its own. ``busy_timeout`` bounds a writer's wait for the write lock as it does
on the engine's connections; WAL lets readers go on beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import exc as sa_exc

THREADS = 5  # as many as the engine's default pool has connections


class SqliteFile:
    """A small pool of threads, each with its own sqlite3 connection to one file."""

    def __init__(self, path: str, busy_timeout_ms: int, *, name: str, read_only: bool) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._read_only = read_only
        self._local = threading.local()
        self._threads = ThreadPoolExecutor(THREADS, name)
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._trace: Callable[[str], object] | None = None

    async def fetch_one(self, sql: str, arguments: Sequence[Any]) -> tuple[Any, ...] | None:
        """The first row ``sql`` gives, if any: one hop to a thread."""
        row: tuple[Any, ...] | None = await self._run(
            sql, lambda connection: connection.execute(sql, arguments).fetchone()
        )
        return row

    async def execute(self, sql: str, arguments: Sequence[Any]) -> int:
        """Run one writing statement; how many rows it changed."""
        return int(
            await self._run(sql, lambda connection: connection.execute(sql, arguments).rowcount)
        )

    async def _run(self, sql: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._threads, self._on_this_thread, work)
        except sqlite3.Error as error:  # as SQLAlchemy's: the store's error handling knows it
            raise sa_exc.OperationalError(sql, None, error) from error

    def _on_this_thread(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        connection = getattr(self._local, "connection", None) or self._connect()
        return work(connection)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        if self._read_only:
            connection.execute("PRAGMA query_only=ON")
        connection.set_trace_callback(self._trace)
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection

    @property
    def trace(self) -> Callable[[str], object] | None:
        """sqlite3's trace callback on every connection: how bench/ counts the statements a
        request costs, where they run."""
        return self._trace

    @trace.setter
    def trace(self, callback: Callable[[str], object] | None) -> None:
        with self._lock:
            self._trace = callback
            for connection in self._connections:
                connection.set_trace_callback(callback)

    def close(self) -> None:
        """Stop the threads and close their connections."""
        self._threads.shutdown(wait=True)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
