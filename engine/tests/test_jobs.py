"""``@idempotent`` around plain async functions, on every store: the outcomes of the middleware."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from whatsorder_idempotency import (
    FingerprintMismatch,
    InvalidKey,
    Outcome,
    RequestInFlight,
    ResultNotKept,
    SqlStore,
    idempotent,
    idempotent_connection,
    open_store,
)
from whatsorder_idempotency.stores.base import LeaseStore


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "redis"]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[LeaseStore]:
    opened = open_store(store_url)
    yield opened
    await opened.close()


def event_id() -> str:
    return f"evt_{secrets.token_hex(8)}"  # Redis outlives a test: every run its own keys


async def test_a_job_runs_once_and_its_result_is_replayed(store: LeaseStore) -> None:
    runs: list[str] = []

    @idempotent(store, key=lambda event: event["id"])
    async def send_invoice(event: dict[str, str]) -> dict[str, object]:
        runs.append(event["id"])
        return {"invoice": f"inv-{len(runs)}", "amount": 4800}

    event = {"id": event_id(), "order": "ORD-1"}
    first = await send_invoice.run(event)
    again = await send_invoice.run(event)
    assert first.outcome is Outcome.NEW
    assert again.outcome is Outcome.REPLAYED
    assert again.value == first.value == {"invoice": "inv-1", "amount": 4800}
    assert await send_invoice(event) == first.value  # a plain call gives the value
    assert len(runs) == 1


async def test_the_same_key_with_other_arguments_is_a_mismatch(store: LeaseStore) -> None:
    @idempotent(store, key=lambda event: event["id"])
    async def refund(event: dict[str, object]) -> int:
        return int(str(event["amount"]))

    key = event_id()
    assert await refund({"id": key, "amount": 100}) == 100
    with pytest.raises(FingerprintMismatch):
        await refund({"id": key, "amount": 900})


async def test_a_job_that_raises_keeps_nothing_and_runs_again(store: LeaseStore) -> None:
    attempts: list[int] = []

    @idempotent(store, key=lambda job_id: job_id)
    async def flaky(job_id: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("the mail server hung up")
        return "sent"

    job = event_id()
    with pytest.raises(ConnectionError):
        await flaky(job)
    assert await flaky(job) == "sent"
    assert await flaky(job) == "sent"
    assert len(attempts) == 2


async def test_copies_in_flight_wait_and_share_the_one_run(store: LeaseStore) -> None:
    runs: list[int] = []

    @idempotent(store, key=lambda job_id: job_id)
    async def slow(job_id: str) -> int:
        runs.append(1)
        await asyncio.sleep(0.3)
        return 42

    job = event_id()
    results = await asyncio.wait_for(asyncio.gather(*(slow.run(job) for _ in range(10))), 20)
    assert [result.value for result in results] == [42] * 10
    assert sum(result.outcome is Outcome.NEW for result in results) == 1
    assert len(runs) == 1


async def test_a_copy_that_waits_too_long_is_told_it_is_in_flight(store: LeaseStore) -> None:
    release = asyncio.Event()

    @idempotent(store, key=lambda job_id: job_id, in_flight_wait=timedelta(milliseconds=200))
    async def held(job_id: str) -> str:
        await release.wait()
        return "done"

    job = event_id()
    first = asyncio.create_task(held(job))
    await asyncio.sleep(0.1)
    with pytest.raises(RequestInFlight):
        await held(job)
    release.set()
    assert await first == "done"
    assert await held(job) == "done"


async def test_a_key_that_breaks_the_rules_is_refused_before_anything_runs(
    store: LeaseStore,
) -> None:
    runs: list[int] = []

    @idempotent(store, key=lambda job_id: job_id)
    async def job(job_id: str) -> int:
        runs.append(1)
        return 1

    with pytest.raises(InvalidKey) as refused:
        await job("x" * 256)
    assert refused.value.rule == "too-long"
    with pytest.raises(InvalidKey):
        await job("")
    assert runs == []


async def test_a_long_scope_is_kept_distinct_and_bounded(store: LeaseStore) -> None:
    """A scope past the store's 64 characters (a deep qualified name) still works, and two
    long scopes with the same start stay two scopes."""
    base = "billing.jobs." + "x" * 80

    @idempotent(store, key=lambda job_id: job_id, scope=base + ".charge")
    async def charge(job_id: str) -> str:
        return "charged"

    @idempotent(store, key=lambda job_id: job_id, scope=base + ".refund")
    async def refund(job_id: str) -> str:
        return "refunded"

    job = event_id()
    assert await charge(job) == "charged"
    assert await refund(job) == "refunded"  # same key, another scope: its own run
    assert (await charge.run(job)).replayed


async def test_a_result_that_cannot_be_encoded_runs_once_and_says_so(store: LeaseStore) -> None:
    runs: list[int] = []

    @idempotent(store, key=lambda job_id: job_id)
    async def odd(job_id: str) -> object:
        runs.append(1)
        return {1, 2, 3}  # a set is not JSON

    job = event_id()
    with pytest.raises(TypeError, match="cannot be encoded"):
        await odd(job)
    with pytest.raises(ResultNotKept):
        await odd(job)
    assert len(runs) == 1


metadata = MetaData()
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(40), nullable=False),
)


@pytest.fixture
async def sql_store(sql_url: str) -> AsyncIterator[SqlStore]:
    opened = open_store(sql_url)
    assert isinstance(opened, SqlStore)
    yield opened
    await opened.close()


async def test_a_job_on_a_sql_store_writes_in_the_transaction_of_its_result(
    sql_store: SqlStore,
) -> None:
    store = sql_store
    async with store.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)

    @idempotent(store, key=lambda event: event["id"])
    async def post_entry(event: dict[str, str]) -> int:
        connection = await idempotent_connection()
        await connection.execute(insert(ledger).values(event_id=event["id"]))
        if event.get("fail"):
            raise RuntimeError("failed after the write")
        return 1

    failing = {"id": event_id(), "fail": "yes"}
    with pytest.raises(RuntimeError):
        await post_entry(failing)
    ok = {"id": event_id()}
    for _ in range(3):
        assert await post_entry(ok) == 1
    async with store.engine.connect() as connection:
        rows = (await connection.execute(select(ledger.c.event_id))).scalars().all()
        total = (await connection.execute(select(func.count()).select_from(ledger))).scalar()
    assert rows == [ok["id"]]  # the failed job's write went with it; the good one once
    assert total == 1
