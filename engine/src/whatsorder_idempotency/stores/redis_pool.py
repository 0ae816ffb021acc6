"""The Redis store's connection pool and its time limits: bounded, waiting, and cheap when free.

A storm of 1,000 copies must not open 1,000 connections (Redis's accept backlog overflowed and
600 of them failed), so a process keeps a bounded number and a request waits for a free one.
redis-py's ``BlockingConnectionPool`` does that, but every command pays for it even when a
connection is free (an ``asyncio.Condition`` and a timeout around each checkout and release),
and redis-py's ``socket_timeout`` wraps every send in ``asyncio.wait_for``, a new task per
command. Measured on the claim script (docs/benchmarks.md, "Where the time goes"): 139 µs of
the client's CPU per command with both, 100 µs with the pool below and one ``asyncio.timeout``
around the whole command instead. A replay is one command, so that is most of what it costs.

So the bound is a semaphore in front of redis-py's own ``ConnectionPool`` (only its public
``get_connection`` and ``release`` are used): taking a free slot never suspends. And each store
step is given ``command_timeout`` as a whole (wait for a slot, connect, send, read): redis-py
drops a connection whose command was cancelled mid-send or mid-read, so a late answer can never
reach the next command on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

POOL_EXHAUSTED = "No connection available."  # as redis-py's BlockingConnectionPool says it


class BoundedConnectionPool(ConnectionPool):
    """At most ``max_connections`` in use; a checkout waits up to ``timeout`` s for a free one."""

    def __init__(self, *, max_connections: int = 50, timeout: float | None = 5, **options: Any):
        super().__init__(max_connections=max_connections, **options)
        self.timeout = timeout
        self._free = asyncio.Semaphore(max_connections)
        self._lent: set[AbstractConnection] = set()

    @property
    def exhausted(self) -> bool:
        """Whether every connection is in use (a checkout would wait)."""
        return self._free.locked()

    async def get_connection(self, *args: Any, **options: Any) -> AbstractConnection:
        if self._free.locked():  # every slot taken: wait for one, for a while
            try:
                async with asyncio.timeout(self.timeout):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError(POOL_EXHAUSTED) from None
        else:
            await self._free.acquire()  # a free slot: returns without suspending
        try:
            connection: AbstractConnection = await super().get_connection(  # type: ignore[no-untyped-call]
                *args, **options
            )
        except BaseException:
            self._free.release()
            raise
        self._lent.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            # Only a connection this pool lent frees a slot, and only once.
            if connection in self._lent:
                self._lent.discard(connection)
                self._free.release()
