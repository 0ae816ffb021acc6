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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import exc as sa_exc

THREADS = 5  # as many as the engine's default pool has connections
FIRST_RETRY, LONGEST_RETRY = 0.0005, 0.002  # seconds between a writer's tries for the lock
# Readers map the file (a read is then a page of the OS's cache, not a read() into a cache of
# each connection's own) and keep more of its pages: a replay's index walk on a large table.
READER_MMAP_BYTES = 1 << 30
READER_CACHE_KIB = 32 * 1024


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
        return int(await self._run(sql, lambda connection: self._write(connection, sql, arguments)))

    def _write(self, connection: sqlite3.Connection, sql: str, arguments: Sequence[Any]) -> int:
        """Try the statement until the write lock is free, every millisecond or two, for at
        most ``busy_timeout``. SQLite's own busy handler sleeps ever longer between its tries
        (up to 100 ms), so a claim behind a writer that holds the lock in short bursts (the
        cleanup's batches, with a pause between them) slept through the gaps; Python's sqlite3
        has no way to set a busy handler of our own, hence this loop."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        pause = FIRST_RETRY
        while True:
            try:
                return int(connection.execute(sql, arguments).rowcount)
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)  # this thread's: the event loop goes on
            pause = min(pause * 2, LONGEST_RETRY)

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
        # timeout=0: no busy handler (sqlite3's default waits 5 s in it); readers set theirs.
        connection = sqlite3.connect(
            self._path, timeout=0, check_same_thread=False, isolation_level=None
        )
        if self._read_only:
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            connection.execute("PRAGMA query_only=ON")
            connection.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
            connection.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
        # A writer waits for the lock in ``_write``, not in SQLite's busy handler.
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
