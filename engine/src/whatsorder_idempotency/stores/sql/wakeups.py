"""PostgreSQL's wake-ups: NOTIFY in the completing statement, LISTEN on a connection apart.

A lease holder's ``complete`` or ``release`` announces the key in the compare-and-set statement
itself, and only when some process waits for that key: the statement tries the key's advisory
lock, which a listening process holds (shared) while one of its requests waits. PostgreSQL
serializes the commits of transactions that NOTIFY (one lock on the notification queue, held
until the commit is flushed): on every completion it cut concurrent completions to a third or
less here, while the lock attempt costs next to nothing (docs/benchmarks.md).

The listener is an asyncpg connection of its own, opened with the engine's URL outside its
pool, so it never takes a connection a claim needs. It needs a session: behind a pooler in
transaction mode LISTEN does not work, and waits go on polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import Table, Update, case, func, null, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder_idempotency.stores.sql.schema import KEY_COLUMN
from whatsorder_idempotency.wakeups import Heard, Wakeups, token

APPLICATION_NAME = "whatsorder-idempotency-wakeups"  # the listener, in pg_stat_activity
MAX_CHANNEL_BYTES = 63  # PostgreSQL's identifiers (NAMEDATALEN - 1)
# Options of SQLAlchemy's asyncpg dialect that asyncpg.connect does not take.
SQLALCHEMY_ONLY = (
    "async_creator_fn",
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
)


def channel_name(table: Table) -> str:
    """``idempotency_<table>``, or a hash of the table's name where that is too long."""
    name = f"idempotency_{table.fullname}"
    if len(name.encode()) > MAX_CHANNEL_BYTES:
        digest = hashlib.blake2b(table.fullname.encode(), digest_size=8).hexdigest()
        name = f"idempotency_{digest}"
    return name


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a completion says of its key: ``token`` on ``channel`` if ``lock`` is held."""

    channel: str
    token: str
    lock: int


class Announcer:
    """A PostgreSQL store's channel: what its holders announce, and its listener here."""

    def __init__(self, engine: AsyncEngine, table: Table) -> None:
        channel = self.channel = channel_name(table)
        self.wakeups = Wakeups(
            lambda: PgChannel(engine, channel, self.lock), f"PostgreSQL channel {channel}"
        )

    def of(self, scope: str, key: str) -> Announcement:
        said = token(scope, key)
        return Announcement(self.channel, said, self.lock(said))

    def lock(self, said: str) -> int:
        """The advisory lock (a bigint) of a token on this channel."""
        digest = hashlib.blake2b(f"{self.channel}:{said}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)


async def changed(
    connection: AsyncConnection, statement: Update, table: Table, said: Announcement | None
) -> bool:
    """Run a compare-and-set UPDATE; True if it changed the row.

    With ``said``, the same statement NOTIFYs if the row changed and somebody waits for the key
    (the key's advisory lock is taken, shared, by a listener): delivered when it commits.
    """
    if said is None:
        return (await connection.execute(statement)).rowcount == 1
    done = statement.returning(table.c[KEY_COLUMN]).cte("done")
    nobody_waits = func.pg_try_advisory_xact_lock(said.lock)
    announced = select(
        case((nobody_waits, null()), else_=func.pg_notify(said.channel, said.token))
    ).select_from(done)
    return len((await connection.execute(announced)).all()) == 1


class _Listening(Protocol):
    """What the listener uses of an asyncpg connection (asyncpg ships no types)."""

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None: ...

    def add_termination_listener(self, callback: Callable[..., None]) -> None: ...

    async def fetchval(self, query: str, *args: object) -> Any: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


class PgChannel:
    """One asyncpg connection that LISTENs, and holds the advisory locks of the keys waited for.

    A lost connection is seen at once when the server ends it (asyncpg's termination listener),
    and within ``PING_EVERY`` + ``PATIENCE`` when it vanishes silently.
    """

    PING_EVERY = 30.0
    PATIENCE = 5.0

    def __init__(self, engine: AsyncEngine, channel: str, lock: Callable[[str], int]) -> None:
        self._engine = engine
        self._channel = channel
        self._lock_of = lock
        self._connection: _Listening | None = None
        self._lost: asyncio.Future[None] | None = None
        self._busy = asyncio.Lock()  # asyncpg runs one query at a time per connection

    async def open(self, heard: Heard) -> None:
        import asyncpg  # type: ignore[import-untyped]

        connect = cast(Callable[..., Awaitable[_Listening]], asyncpg.connect)
        args, options = self._engine.dialect.create_connect_args(self._engine.url)
        for name in SQLALCHEMY_ONLY:
            options.pop(name, None)
        settings = {"application_name": APPLICATION_NAME, **(options.pop("server_settings", {}))}
        self._connection = await connect(
            *args, **options, server_settings=settings, timeout=self.PATIENCE
        )
        lost = self._lost = asyncio.get_running_loop().create_future()

        def on_termination(_connection: object) -> None:
            if not lost.done():
                lost.set_result(None)

        self._connection.add_termination_listener(on_termination)
        await self._connection.add_listener(
            self._channel, lambda _connection, _pid, _channel, said: heard(said)
        )

    async def until_lost(self) -> None:
        assert self._lost is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._lost), self.PING_EVERY)
                return
            await self._query("SELECT 1")

    async def watch(self, token: str) -> None:
        # Waits only while a holder's own statement holds the lock: until it commits.
        await self._query("SELECT pg_advisory_lock_shared($1)", self._lock_of(token))

    async def unwatch(self, token: str) -> None:
        await self._query("SELECT pg_advisory_unlock_shared($1)", self._lock_of(token))

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            async with asyncio.timeout(self.PATIENCE):
                await connection.close()
        except BaseException:
            connection.terminate()
            raise

    async def _query(self, query: str, *args: object) -> None:
        assert self._connection is not None
        async with self._busy, asyncio.timeout(self.PATIENCE):
            await self._connection.fetchval(query, *args)
