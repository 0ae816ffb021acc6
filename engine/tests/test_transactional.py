"""Transactional mode on SQLite: a replay is one read and never waits for the write lock.

Another process writing to the database holds SQLite's single write lock; a new key must wait
for it (up to ``busy_timeout``), but a completed key is answered from the committed record.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency import (
    FingerprintMismatch,
    HandlerResult,
    IdempotencyEngine,
    IdempotentRequest,
    Outcome,
    RequestInFlight,
    SqlStore,
    StoreBusy,
    StoredResponse,
    idempotency_table,
    sql_engine,
)
from whatsorder_idempotency.record import utcnow

metadata = MetaData()
effects = Table("effects", metadata, Column("id", Integer, primary_key=True))
BUSY = timedelta(seconds=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tx.db"


@pytest.fixture
async def engine(path: Path) -> AsyncIterator[IdempotencyEngine[AsyncConnection]]:
    database = sql_engine(f"sqlite:///{path}", busy_timeout=BUSY)
    async with database.begin() as connection:
        await connection.run_sync(metadata.create_all)
    store = SqlStore(database, idempotency_table(MetaData()), create_table=True)
    yield IdempotencyEngine(store)
    await database.dispose()


@pytest.fixture
def writer(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's long write transaction, holding the database's write lock."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    yield other
    other.close()


async def handle(connection: AsyncConnection) -> HandlerResult:
    await connection.execute(insert(effects))
    return HandlerResult(StoredResponse.build(201, b'{"ok":true}', {"content-type": "x/y"}))


async def count(engine: IdempotencyEngine[AsyncConnection]) -> int:
    store = engine.store
    assert isinstance(store, SqlStore)
    async with store.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(effects))).scalar())


async def test_a_replay_is_answered_while_another_writer_holds_the_lock(
    engine: IdempotencyEngine[AsyncConnection], writer: sqlite3.Connection
) -> None:
    first = await engine.execute(IdempotentRequest("orders", "k-1", "f-1"), handle)
    assert first.outcome is Outcome.NEW

    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        again = await engine.execute(IdempotentRequest("orders", "k-1", "f-1"), handle)
        took = time.monotonic() - started
        with pytest.raises(FingerprintMismatch):
            await engine.execute(IdempotentRequest("orders", "k-1", "another"), handle)
        with pytest.raises(StoreBusy):  # a new key needs the lock: it waits, then gives up
            await engine.execute(IdempotentRequest("orders", "k-2", "f-2"), handle)
    finally:
        writer.execute("ROLLBACK")

    assert again.outcome is Outcome.REPLAYED
    assert (again.response.status, again.response.body) == (201, b'{"ok":true}')
    assert took < BUSY.total_seconds() / 2, f"the replay waited {took:.2f} s for the lock"
    assert await count(engine) == 1


async def test_a_key_claimed_in_lease_mode_is_decided_in_the_transaction(
    engine: IdempotencyEngine[AsyncConnection],
) -> None:
    """A record in flight (lease mode's claim) is not short-cut by the read: it is refused."""
    store = engine.store
    assert isinstance(store, SqlStore)
    request = IdempotentRequest("orders", "k-3", "f-3")
    await store.claim(request, utcnow(), timedelta(seconds=30), timedelta(hours=1))

    with pytest.raises(RequestInFlight):
        await engine.execute(request, handle)
    assert await count(engine) == 0


async def test_a_store_that_creates_its_table_does_so_before_its_first_transaction(
    path: Path,
) -> None:
    database = sql_engine(f"sqlite:///{path}")
    store = SqlStore(database, idempotency_table(MetaData()), create_table=True)
    try:
        async with store.transaction() as transaction:
            claimed = await transaction.insert_claim(
                IdempotentRequest("orders", "k-4", "f-4"), utcnow(), timedelta(seconds=30)
            )
        assert claimed
        assert (await store.get("orders", "k-4")) is not None
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_the_handler_runs_at_the_isolation_level_its_engine_sets(postgres_url: str) -> None:
    """The read before the claim switches to autocommit; the transaction after it is the app's."""
    database = sql_engine(postgres_url).execution_options(isolation_level="SERIALIZABLE")
    store = SqlStore(database, idempotency_table(MetaData()), create_table=True)

    async def report_level(connection: AsyncConnection) -> HandlerResult:
        level = (await connection.execute(text("SHOW transaction_isolation"))).scalar_one()
        return HandlerResult(StoredResponse.build(200, str(level).encode(), {}))

    try:
        result = await IdempotencyEngine(store).execute(
            IdempotentRequest("orders", "k-5", "f-5"), report_level
        )
    finally:
        await database.dispose()
    assert result.response.body == b"serializable"


def request_of(body: str = "one") -> IdempotentRequest:
    return IdempotentRequest(scope="orders", key="storm", fingerprint=f"fp-{body}")


async def counted_engine(sql_url: str) -> tuple[IdempotencyEngine[AsyncConnection], dict[str, int]]:
    """An engine on ``sql_url`` whose transactions (and the handler's effects) can be counted."""
    from sqlalchemy import event

    database = sql_engine(sql_url, pool_size=3, max_overflow=0)
    async with database.begin() as connection:
        await connection.run_sync(metadata.create_all)
    store = SqlStore(database, idempotency_table(MetaData()), create_table=True)
    await store.get("warm", "up")
    counted = {"begin": 0}
    event.listen(
        database.sync_engine, "begin", lambda _c: counted.__setitem__("begin", counted["begin"] + 1)
    )
    return IdempotencyEngine(store), counted


async def test_copies_in_one_process_wait_for_the_first_and_replay_it_without_the_database(
    sql_url: str,
) -> None:
    """Transactional mode (first_copies.py): thirty copies arrive together, one transaction
    runs the handler; the others replay its committed answer, none begins a transaction."""
    import asyncio

    engine, counted = await counted_engine(sql_url)
    try:

        async def slow(connection: AsyncConnection) -> HandlerResult:
            await asyncio.sleep(0.1)
            return await handle(connection)

        results = await asyncio.gather(*(engine.execute(request_of(), slow) for _ in range(30)))

        assert sorted(r.outcome for r in results) == sorted([Outcome.NEW] + [Outcome.REPLAYED] * 29)
        assert {r.response.body for r in results} == {b'{"ok":true}'}
        assert counted["begin"] == 1, f"{counted['begin']} transactions for 30 copies"
        assert await count(engine) == 1
    finally:
        await engine.store.close()


async def test_a_copy_of_another_request_or_after_a_failure_runs_as_if_alone(sql_url: str) -> None:
    """The first copy's answer goes only to the same request, and only once committed."""
    import asyncio

    engine, _counted = await counted_engine(sql_url)
    try:
        calls: list[str] = []

        async def failing(connection: AsyncConnection) -> HandlerResult:
            calls.append("failing")
            await asyncio.sleep(0.1)
            await connection.execute(insert(effects))
            raise RuntimeError("the handler failed: its insert rolls back")

        async def working(connection: AsyncConnection) -> HandlerResult:
            calls.append("working")
            return await handle(connection)

        first = asyncio.ensure_future(engine.execute(request_of(), failing))
        await asyncio.sleep(0.02)
        other = asyncio.ensure_future(engine.execute(request_of("two"), working))  # other body
        same = asyncio.ensure_future(engine.execute(request_of(), working))
        with pytest.raises(RuntimeError):
            await first
        outcomes = await asyncio.gather(other, same, return_exceptions=True)

        # Nothing was committed by the first: one of the two runs and stores its answer; the
        # other, a different request under the key, is refused or replays only its own.
        assert await count(engine) == 1
        assert calls.count("working") == 1, (calls, outcomes)
        assert any(isinstance(o, FingerprintMismatch) for o in outcomes) or all(
            not isinstance(o, BaseException) for o in outcomes
        ), outcomes
    finally:
        await engine.store.close()


async def test_a_copy_waits_for_the_first_no_longer_than_its_in_flight_wait(tmp_path: Path) -> None:
    import asyncio

    database = sql_engine(f"sqlite:///{tmp_path}/wait.db")
    async with database.begin() as connection:
        await connection.run_sync(metadata.create_all)
    wait = timedelta(seconds=0.3)  # the store's: how long its duplicates wait on a claim
    store = SqlStore(
        database, idempotency_table(MetaData()), in_flight_wait=wait, create_table=True
    )
    engine = IdempotencyEngine(store)
    try:

        async def long(connection: AsyncConnection) -> HandlerResult:
            await asyncio.sleep(1.0)
            return await handle(connection)

        first = asyncio.ensure_future(engine.execute(request_of(), long))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(RequestInFlight):
            await engine.execute(request_of(), long)
        assert 0.25 <= time.monotonic() - started < 0.9
        assert (await first).outcome is Outcome.NEW
    finally:
        await store.close()


async def test_a_lease_claim_gets_the_sqlite_lock_between_another_writers_bursts(
    tmp_path: Path,
) -> None:
    """Another writer holds the write lock 20 ms at a time with 3 ms between (as cleanup's
    batches do): a lease claim gets in at the next gap (sqlite_file.py tries every 2 ms at most),
    where SQLite's own busy handler, sleeping ever longer between tries, slept through them."""
    import statistics
    import threading

    from whatsorder_idempotency.record import IdempotentRequest as Request

    path = tmp_path / "bursts.db"
    store = SqlStore(
        sql_engine(f"sqlite:///{path}"), idempotency_table(MetaData()), create_table=True
    )
    await store.get("warm", "up")
    stop = threading.Event()

    def bursts() -> None:
        other = sqlite3.connect(path, isolation_level=None, timeout=5)
        while not stop.is_set():
            other.execute("BEGIN IMMEDIATE")
            time.sleep(0.02)
            other.execute("COMMIT")
            time.sleep(0.003)
        other.close()

    writer = threading.Thread(target=bursts)
    writer.start()
    took: list[float] = []
    try:
        for number in range(30):
            started = time.monotonic()
            claimed = await store.claim(
                Request("orders", f"k-{number}", "fp"), utcnow(), timedelta(seconds=4), BUSY
            )
            took.append(time.monotonic() - started)
            assert not isinstance(claimed, type(None))
    finally:
        stop.set()
        writer.join(timeout=10)
        await store.close()
    assert statistics.mean(took) < 0.06, [round(t * 1000) for t in took]


async def test_copies_waiting_on_a_first_copy_that_was_refused_are_refused_at_once(
    postgres_url: str,
) -> None:
    """The first copy of this process waited out the store's in-flight wait behind a claim held
    elsewhere (another process's open transaction) and got RequestInFlight: the copies that
    waited on it get the same answer then, not a fresh wait each, a pool's worth at a time."""
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    wait = timedelta(seconds=0.5)
    database = sql_engine(postgres_url, pool_size=3, max_overflow=0)
    table = idempotency_table(MetaData(), "refused_records")
    store = SqlStore(database, table, in_flight_wait=wait, create_table=True)
    await store.get("warm", "up")
    engine = IdempotencyEngine(store)
    other = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    holder = other.transaction()
    await holder.start()  # the claim, held elsewhere and never committed
    await other.execute(
        "INSERT INTO refused_records (webhook_type, idempotency_key, fingerprint, status, epoch,"
        " created_at) VALUES ('orders', 'storm', 'fp-one', 'in_progress', 1, now())"
    )
    try:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(engine.execute(request_of(), handle) for _ in range(20)), return_exceptions=True
        )
        took = time.monotonic() - started
    finally:
        await holder.rollback()
        await other.close()
        async with database.begin() as connection:
            await connection.run_sync(table.drop)
        await store.close()
    assert all(isinstance(answer, StoreBusy | RequestInFlight) for answer in answers), answers
    assert took < 3 * wait.total_seconds(), f"20 copies answered after {took:.2f} s"
