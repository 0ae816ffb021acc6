"""PostgreSQL without pre-ping: dead pooled connections are replaced or retried, where safe.

A replay is one round trip: the pool no longer pings a connection before handing it out. The
server ending the pool's connections for real (``pg_terminate_backend``, as a restart does)
stays invisible: a connection the driver knows is closed is replaced at checkout, and a read
that finds its connection dead on use runs again on a fresh one. A statement that may have run
before its connection died is not run again: it is ``StoreUnavailable`` (a 503), never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import MetaData, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from pg_wire import Wire, counting_relay
from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyEngine,
    IdempotencyRecord,
    IdempotentRequest,
    Outcome,
    RequestInFlight,
    SqlStore,
    StoredResponse,
    StoreUnavailable,
    idempotency_table,
    sql_engine,
)
from whatsorder_idempotency.record import Status, utcnow
from whatsorder_idempotency.stores.base import Claimed
from whatsorder_idempotency.stores.sql.driver_pool import DriverPool

pytestmark = pytest.mark.postgres

LEASE = timedelta(seconds=30)
TTL = timedelta(hours=1)
# Every other session of the test's own database, ended by the server; the count waits for
# each to be gone (pg_terminate_backend's timeout).
END_OTHER_SESSIONS = (
    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
# The session of the test's database that is running a statement and waiting in it.
WAITING_SESSION = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND state = 'active'"
)
WAITING = {
    "lock": WAITING_SESSION + " AND wait_event_type = 'Lock'",
    "sleep": WAITING_SESSION + " AND query LIKE '%pg_sleep%'",
}


@dataclass
class Seen:
    """What the store did: round trips on the wire, transactions, pings, new connections."""

    wire: Wire
    pool: DriverPool  # the store's own, for statements that run alone
    begins: int = 0
    commits: int = 0
    pings: int = 0
    invalidated: int = 0  # SQLAlchemy's connections found dead on use
    _connections_before: int = 0
    _found_dead_before: int = 0

    @property
    def statements(self) -> list[str]:
        """The SQL of each round trip that ran a statement, as the relay saw it pass."""
        return self.wire.statements

    @property
    def connects(self) -> int:
        """New connections, by either pool (the relay sees each one open)."""
        return self.wire.connections - self._connections_before

    @property
    def disconnects(self) -> int:
        """Statements that failed because their connection was dead, on either pool."""
        return self.invalidated + self.pool.found_dead - self._found_dead_before

    def clear(self) -> None:
        self.wire.clear()
        self.begins = self.commits = self.pings = self.invalidated = 0
        self._connections_before = self.wire.connections
        self._found_dead_before = self.pool.found_dead


@pytest.fixture
def wire(postgres_url: str) -> Iterator[Wire]:
    with counting_relay(postgres_url) as wire:
        yield wire


@pytest.fixture
async def store(wire: Wire) -> AsyncIterator[SqlStore]:
    database = sql_engine(wire.url, pool_size=3, max_overflow=0)
    store = SqlStore(database, idempotency_table(MetaData()), create_table=True)
    await store.get("warm", "up")  # the table
    yield store
    await store.close()


@pytest.fixture
def seen(store: SqlStore, wire: Wire) -> Iterator[Seen]:
    """Round trips from the relay; transactions, connections and the pool's dead connections
    from the store's engine; the dialect's ``do_ping`` wrapped as ``bench/`` does."""
    engine = store.engine.sync_engine
    seen = Seen(wire, driver_pool(store))

    def on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            seen.begins += 1

    def on_commit(_connection: Any) -> None:
        seen.commits += 1

    def on_invalidate(_dbapi_connection: Any, _record: Any, error: BaseException | None) -> None:
        # A connection found dead on use (a checkout that replaces a closed one says so with
        # DisconnectionError: no statement was sent on it).
        if not isinstance(error, sa_exc.DisconnectionError):
            seen.invalidated += 1

    listeners = [
        ("begin", on_begin),
        ("commit", on_commit),
        ("invalidate", on_invalidate),
    ]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    original_ping = engine.dialect.do_ping

    def ping(connection: Any) -> bool:
        seen.pings += 1
        return bool(original_ping(connection))

    engine.dialect.do_ping = ping  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        engine.dialect.do_ping = original_ping  # type: ignore[method-assign]
        for name, listener in listeners:
            event.remove(engine, name, listener)


def request(key: str, fingerprint: str = "f") -> IdempotentRequest:
    return IdempotentRequest("orders", key, fingerprint)


async def answer(_connection: AsyncConnection) -> HandlerResult:
    return HandlerResult(StoredResponse.build(201, b'{"id":1}', {}))


def response() -> StoredResponse:
    return StoredResponse.build(201, b'{"id":1}', {})


async def fill_pool(store: SqlStore, size: int = 3) -> list[Any]:
    """The ``size`` connections of each pool (SQLAlchemy's, and the store's own for statements
    that run alone: driver_pool.py), each used once and back in its pool: their drivers."""
    connections = [await store.engine.connect() for _ in range(size)]
    drivers = []
    for connection in connections:
        await connection.exec_driver_sql("SELECT 1")
        drivers.append((await connection.get_raw_connection()).driver_connection)
        await connection.close()
    async with contextlib.AsyncExitStack() as lent:
        lone = driver_pool(store)
        for _ in range(size):
            connection = await lent.enter_async_context(lone.connection())
            await connection.fetchval("SELECT 1")
            drivers.append(connection)
    return drivers


def driver_pool(store: SqlStore) -> DriverPool:
    pool = store._driver_pool
    assert pool is not None
    assert pool.size == 3, "the store's own pool is the engine's size"
    return pool


async def admin(postgres_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))


async def end_every_other_session(postgres_url: str) -> int:
    """The server ends every other session of the test's database, and waits until it has."""
    connection = await admin(postgres_url)
    try:
        ended = await connection.fetchval(END_OTHER_SESSIONS)
    finally:
        await connection.close()
    return int(ended)


async def ended_and_noticed(postgres_url: str, drivers: list[Any]) -> None:
    """Sessions ended, and the driver has read the news (as in a pool idle through a restart)."""
    assert await end_every_other_session(postgres_url) >= len(drivers)
    deadline = time.monotonic() + 5
    while not all(driver.is_closed() for driver in drivers):
        assert time.monotonic() < deadline, "the driver never noticed the closed connections"
        await asyncio.sleep(0.01)


def ended_unnoticed(postgres_url: str) -> None:
    """Sessions ended while this event loop is blocked: the driver has not read the news yet,
    so the pool hands out a dead connection and the death is found on use."""
    ended: list[int] = []
    worker = threading.Thread(
        target=lambda: ended.append(asyncio.run(end_every_other_session(postgres_url)))
    )
    worker.start()
    worker.join(timeout=20)
    assert ended, "the sessions were not ended in time"
    assert ended[0] >= 1


def epoch_of(claimed: Claimed | IdempotencyRecord) -> int | None:
    return claimed.epoch if isinstance(claimed, Claimed) else None


def status_of(found: Claimed | IdempotencyRecord | None) -> Status | None:
    return found.status if isinstance(found, IdempotencyRecord) else None


async def complete_a_key(store: SqlStore, key: str) -> None:
    assert epoch_of(await store.claim(request(key), utcnow(), LEASE, TTL)) == 1
    assert await store.complete(request(key), 1, response(), utcnow(), TTL)


# --- round trips on a healthy pool ---------------------------------------------------------


async def test_a_replay_is_one_round_trip_and_the_pool_never_pings(
    store: SqlStore, seen: Seen
) -> None:
    """Counted on the wire. A connection's first replay also prepares the statement (asyncpg
    keeps it per connection): once per pooled connection, then one round trip each time."""
    await complete_a_key(store, "k-replay")
    engine = IdempotencyEngine[AsyncConnection](store)
    await engine.execute(request("k-tx"), answer)
    await fill_pool(store)

    for _ in range(3):  # the pool hands its 3 connections out in turn: each has prepared
        await store.get("orders", "k-replay")

    seen.clear()
    record = await store.claim(request("k-replay"), utcnow(), LEASE, TTL)  # lease mode
    assert status_of(record) is Status.COMPLETED
    assert len(seen.wire.trips) == 1, seen.wire.trips
    assert seen.statements[0].startswith("SELECT")
    assert (seen.begins, seen.commits, seen.pings) == (0, 0, 0)

    seen.clear()
    replayed = await engine.execute(request("k-tx"), answer)  # transactional mode
    assert replayed.outcome is Outcome.REPLAYED
    assert len(seen.wire.trips) == 1, seen.wire.trips
    assert (seen.begins, seen.commits, seen.pings) == (0, 0, 0)


async def test_a_first_request_in_lease_mode_is_three_statements_each_one_round_trip(
    store: SqlStore, seen: Seen
) -> None:
    """Lease mode (the middleware): the read, the claim and the completion, each alone in
    autocommit and run by asyncpg itself (lone.py): no BEGIN, COMMIT or reset of any kind."""
    for warm in range(3):  # every pooled connection has prepared the three statements
        await complete_a_key(store, f"k-warm-{warm}")
    await fill_pool(store)

    seen.clear()
    assert epoch_of(await store.claim(request("k-lease"), utcnow(), LEASE, TTL)) == 1
    assert await store.complete(request("k-lease"), 1, response(), utcnow(), TTL)
    kinds = [statement.split()[0] for statement in seen.statements]
    assert kinds == ["SELECT", "INSERT", "WITH"], seen.statements  # WITH: the UPDATE + NOTIFY
    assert len(seen.wire.trips) == 3, seen.wire.trips
    assert (seen.begins, seen.commits, seen.pings) == (0, 0, 0)
    stored = await store.get("orders", "k-lease")
    assert status_of(stored) is Status.COMPLETED
    assert stored is not None
    assert stored.response == response()
    # The fence holds on the driver's path too: a stale epoch changes nothing.
    assert not await store.complete(request("k-lease"), 1, response(), utcnow(), TTL)


async def test_a_first_request_in_one_transaction_adds_the_claim_and_the_answer_only(
    store: SqlStore, seen: Seen
) -> None:
    """Transactional mode: one read before, then the handler's own transaction (BEGIN, its
    statements, COMMIT: asyncpg sends BEGIN as a round trip of its own) gains the claim INSERT
    (which also sets lock_timeout) and the completion UPDATE, nothing else."""
    engine = IdempotencyEngine[AsyncConnection](store)
    for warm in range(3):  # every pooled connection has prepared the statements
        await engine.execute(request(f"k-warm-{warm}"), answer)
    handled: list[str] = []

    async def handler(connection: AsyncConnection) -> HandlerResult:
        setting = text("SELECT setting FROM pg_settings WHERE name = 'lock_timeout'")
        handled.append(str((await connection.execute(setting)).scalar_one()))
        return await answer(connection)

    seen.clear()
    result = await engine.execute(request("k-first"), handler)
    assert result.outcome is Outcome.NEW
    kinds = [statement.split()[0].rstrip(";") for statement in seen.statements]
    assert kinds == ["SELECT", "BEGIN", "INSERT", "SELECT", "UPDATE", "COMMIT"], seen.statements
    assert "prepare" not in [text for trip in seen.wire.trips for text in trip][:3]
    assert (seen.begins, seen.commits, seen.pings) == (1, 1, 0)
    assert "set_config" in seen.statements[2]
    # The handler's statements are bounded as before: lock_timeout is the transaction's.
    assert 0 < int(handled[0]) <= 5000  # ms


async def test_a_duplicate_in_one_transaction_still_waits_at_most_its_in_flight_wait(
    store: SqlStore, postgres_url: str
) -> None:
    """The lock_timeout set by the claim itself bounds the claim's own wait on the first copy."""
    wait = timedelta(seconds=0.5)
    bounded = SqlStore(store.engine, store.table, in_flight_wait=wait)
    engine = IdempotencyEngine[AsyncConnection](bounded)
    first_copy = await admin(postgres_url)  # holds the claim, uncommitted
    await first_copy.execute("BEGIN")
    await first_copy.execute(
        "INSERT INTO webhook_idempotency (webhook_type, idempotency_key, fingerprint, status,"
        " epoch, locked_until, created_at) VALUES ('orders', 'k-held', 'f', 'in_progress', 1,"
        " now() + interval '30 seconds', now())"
    )
    try:
        started = time.monotonic()
        with pytest.raises(RequestInFlight):
            await engine.execute(request("k-held"), answer)
        took = time.monotonic() - started
    finally:
        await first_copy.execute("ROLLBACK")
        await first_copy.close()
    assert 0.4 < took < 2.0, f"the duplicate was answered after {took:.2f} s"


# --- connections the server ended while they sat in the pool -------------------------------


async def test_every_step_succeeds_after_the_server_ended_the_pooled_connections(
    store: SqlStore, seen: Seen, postgres_url: str
) -> None:
    """As after a restart: each step is served on fresh connections, with no ping and no error
    reaching the caller; the dead connections were replaced before anything was sent on them."""
    engine = IdempotencyEngine[AsyncConnection](store)
    await complete_a_key(store, "k-done")
    await engine.execute(request("k-tx-done"), answer)

    async def replay() -> None:
        assert status_of(await store.get("orders", "k-done")) is Status.COMPLETED

    async def lease_replay() -> None:
        record = await store.claim(request("k-done"), utcnow(), LEASE, TTL)
        assert status_of(record) is Status.COMPLETED

    async def first_claim() -> None:
        assert epoch_of(await store.claim(request("k-new"), utcnow(), LEASE, TTL)) == 1

    async def renew() -> None:
        assert await store.renew("orders", "k-new", 1, utcnow() + LEASE)

    async def complete() -> None:
        assert await store.complete(request("k-new"), 1, response(), utcnow(), TTL)

    async def transactional_first() -> None:
        assert (await engine.execute(request("k-tx-new"), answer)).outcome is Outcome.NEW

    async def transactional_replay() -> None:
        assert (await engine.execute(request("k-tx-done"), answer)).outcome is Outcome.REPLAYED

    async def transaction() -> None:
        async with store.transaction() as opened:
            assert await opened.insert_claim(request("k-in-tx"), utcnow(), LEASE)

    for step in (
        replay,
        lease_replay,
        first_claim,
        renew,
        complete,
        transactional_first,
        transactional_replay,
        transaction,
    ):
        await ended_and_noticed(postgres_url, await fill_pool(store))
        seen.clear()
        await step()
        assert seen.connects >= 1, f"{step.__name__}: no fresh connection"
        assert (seen.pings, seen.disconnects) == (0, 0), step.__name__


# --- connections found dead on use (the driver had not noticed yet) ------------------------


async def test_a_read_that_finds_its_connection_dead_runs_once_more_on_a_fresh_one(
    store: SqlStore, seen: Seen, postgres_url: str
) -> None:
    engine = IdempotencyEngine[AsyncConnection](store)
    await complete_a_key(store, "k-done")
    await engine.execute(request("k-tx-done"), answer)

    async def replay() -> None:
        assert status_of(await store.get("orders", "k-done")) is Status.COMPLETED

    async def first_claim() -> None:  # its read first, on the dead connection
        assert epoch_of(await store.claim(request("k-new"), utcnow(), LEASE, TTL)) == 1

    async def transactional_replay() -> None:
        assert (await engine.execute(request("k-tx-done"), answer)).outcome is Outcome.REPLAYED

    async def transactional_first() -> None:  # the read, then the transaction on its connection
        assert (await engine.execute(request("k-tx-new"), answer)).outcome is Outcome.NEW

    for step in (replay, first_claim, transactional_replay, transactional_first):
        await fill_pool(store)
        ended_unnoticed(postgres_url)
        seen.clear()
        await step()
        assert seen.disconnects == 1, f"{step.__name__}: the dead connection was not used"
        assert (seen.connects >= 1, seen.pings) == (True, 0), step.__name__


async def test_a_transaction_whose_first_statement_finds_its_connection_dead_begins_again(
    store: SqlStore, seen: Seen, postgres_url: str
) -> None:
    """Nothing was done in it yet (SET LOCAL lock_timeout, sent with the BEGIN, failed)."""
    await fill_pool(store)
    ended_unnoticed(postgres_url)
    seen.clear()
    async with store.transaction() as opened:
        assert await opened.insert_claim(request("k-in-tx"), utcnow(), LEASE)
    assert (seen.disconnects, seen.commits) == (1, 1)
    assert await store.get("orders", "k-in-tx") is not None


async def test_a_compare_and_set_sent_on_a_dead_connection_is_not_run_again(
    store: SqlStore, seen: Seen, postgres_url: str
) -> None:
    """Whether it ran is unknown once sent: 503 (StoreUnavailable), and the client retries."""
    assert epoch_of(await store.claim(request("k-held"), utcnow(), LEASE, TTL)) == 1
    await fill_pool(store)
    ended_unnoticed(postgres_url)
    seen.clear()
    with pytest.raises(StoreUnavailable):
        await store.renew("orders", "k-held", 1, utcnow() + LEASE)
    assert seen.disconnects == 1
    # The failure invalidated the pool: the client's retry is served on fresh connections.
    assert await store.renew("orders", "k-held", 1, utcnow() + LEASE)
    assert await store.complete(request("k-held"), 1, response(), utcnow(), TTL)


# --- a connection that dies while its statement is in flight -------------------------------


async def waiting_backend(watcher: asyncpg.Connection, what: str) -> int:
    """The pid of the session that is waiting (on a lock, or in pg_sleep), once it is."""
    deadline = time.monotonic() + 5
    while True:
        pid = await watcher.fetchval(WAITING[what])
        if pid is not None:
            return int(pid)
        assert time.monotonic() < deadline, f"no session waiting ({what})"
        await asyncio.sleep(0.02)


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert took < seconds, f"took {took:.2f} s: retried, or waited on a lock again"


async def test_a_claim_whose_connection_dies_mid_statement_is_a_clean_503(
    store: SqlStore, postgres_url: str
) -> None:
    """The new key's INSERT waits on another session's uncommitted claim of the same key and
    its session is ended there. Not retried (a retry would wait on that claim again), and no
    500: the client's retry decides the key afresh."""
    other = await admin(postgres_url)
    watcher = await admin(postgres_url)
    await other.execute("BEGIN")
    await other.execute(
        "INSERT INTO webhook_idempotency (webhook_type, idempotency_key, fingerprint, status,"
        " epoch, locked_until, created_at) VALUES ('orders', 'k-mid', 'f', 'in_progress', 1,"
        " now() + interval '30 seconds', now())"
    )
    try:
        claim = asyncio.create_task(store.claim(request("k-mid"), utcnow(), LEASE, TTL))
        pid = await waiting_backend(watcher, "lock")
        with bounded(3.0):
            await watcher.execute("SELECT pg_terminate_backend($1, 5000)", pid)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(claim, timeout=10)
    finally:
        await other.execute("ROLLBACK")
        await other.close()
        await watcher.close()
    # The client's retry: the other session's claim rolled back, so the key is new again.
    assert epoch_of(await store.claim(request("k-mid"), utcnow(), LEASE, TTL)) == 1


async def test_a_completion_whose_connection_dies_mid_statement_is_a_clean_503(
    store: SqlStore, postgres_url: str
) -> None:
    assert epoch_of(await store.claim(request("k-c"), utcnow(), LEASE, TTL)) == 1
    locker = await admin(postgres_url)
    watcher = await admin(postgres_url)
    await locker.execute("BEGIN")
    await locker.execute(
        "SELECT 1 FROM webhook_idempotency WHERE idempotency_key = 'k-c' FOR UPDATE"
    )
    try:
        completing = asyncio.create_task(
            store.complete(request("k-c"), 1, response(), utcnow(), TTL)
        )
        pid = await waiting_backend(watcher, "lock")
        with bounded(3.0):
            await watcher.execute("SELECT pg_terminate_backend($1, 5000)", pid)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(completing, timeout=10)
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
        await watcher.close()
    record = await store.get("orders", "k-c")
    assert record is not None
    assert (record.status, record.epoch) == (Status.IN_PROGRESS, 1)
    assert await store.complete(request("k-c"), 1, response(), utcnow(), TTL)  # its retry


@pytest.mark.parametrize("step", ["read", "claim", "completion"])
async def test_a_statement_cancelled_on_its_way_leaves_no_busy_connection_in_the_pool(
    wire: Wire, step: str
) -> None:
    """The request is cancelled while the database is slow to answer: the driver's connection
    is still busy with the statement, so it must not be handed out again as it is (the next
    statement on it would fail: "another operation is in progress")."""
    database = sql_engine(wire.url, pool_size=1, max_overflow=0)
    store = SqlStore(database, idempotency_table(MetaData()), create_table=True)
    try:
        await complete_a_key(store, "k-done")
        assert epoch_of(await store.claim(request("k-held"), utcnow(), LEASE, TTL)) == 1
        slow = {
            "read": lambda: store.get("orders", "k-done"),
            "claim": lambda: store.claim(request("k-new"), utcnow(), LEASE, TTL),
            "completion": lambda: store.complete(request("k-held"), 1, response(), utcnow(), TTL),
        }[step]
        wire.latency = 0.5
        on_its_way = asyncio.ensure_future(slow())
        await asyncio.sleep(0.2)  # sent; the answer is held by the relay
        on_its_way.cancel()
        with pytest.raises(asyncio.CancelledError):
            await on_its_way
        wire.latency = 0.0

        # The pool's one connection, or its replacement: every step works.
        assert status_of(await store.get("orders", "k-done")) is Status.COMPLETED
        assert epoch_of(await store.claim(request("k-next"), utcnow(), LEASE, TTL)) == 1
        assert await store.complete(request("k-next"), 1, response(), utcnow(), TTL)
    finally:
        await store.close()


async def test_a_transaction_whose_connection_dies_in_the_handler_is_a_clean_503(
    store: SqlStore, postgres_url: str
) -> None:
    """Its handler ran: the transaction is not run again here, and nothing of it is kept."""
    engine = IdempotencyEngine[AsyncConnection](store)
    runs: list[int] = []

    async def slow(connection: AsyncConnection) -> HandlerResult:
        runs.append(1)
        await connection.execute(text("SELECT pg_sleep(10)"))
        return await answer(connection)

    watcher = await admin(postgres_url)
    try:
        executing = asyncio.create_task(engine.execute(request("k-h"), slow))
        pid = await waiting_backend(watcher, "sleep")
        with bounded(3.0):
            await watcher.execute("SELECT pg_terminate_backend($1, 5000)", pid)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(executing, timeout=10)
    finally:
        await watcher.close()
    assert runs == [1]
    assert await store.get("orders", "k-h") is None  # the claim rolled back with the handler
