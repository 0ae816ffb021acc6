"""The engine's options mean what they say, and its outcomes speak one vocabulary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyConfig,
    IdempotencyEngine,
    IdempotencyEvent,
    IdempotentRequest,
    Outcome,
    RequestInFlight,
    SqlStore,
    StoreBusy,
    StoredResponse,
    events,
    idempotency_table,
    open_store,
    sql_engine,
)
from whatsorder_idempotency.record import utcnow
from whatsorder_idempotency.stores.base import LeaseStore

LIMIT = 16


@pytest.fixture
async def transactional(tmp_path: Path) -> AsyncIterator[SqlStore]:
    database = sql_engine(f"sqlite:///{tmp_path}/options.db")
    yield SqlStore(database, idempotency_table(MetaData()), create_table=True)
    await database.dispose()


@pytest.fixture
async def memory() -> AsyncIterator[LeaseStore]:
    store = open_store("memory://")
    yield store
    await store.close()


async def test_a_body_over_the_stored_limit_is_sent_whole_and_replayed_without_a_second_run(
    transactional: SqlStore,
) -> None:
    runs: list[int] = []
    body = b"x" * (LIMIT + 1)

    async def handle(_connection: AsyncConnection) -> HandlerResult:
        runs.append(1)
        return HandlerResult(StoredResponse.build(201, body, {"content-type": "text/plain"}))

    engine = IdempotencyEngine(transactional, IdempotencyConfig(max_stored_body_bytes=LIMIT))
    request = IdempotentRequest("orders", "big", "f")
    first = await engine.execute(request, handle)
    again = await engine.execute(request, handle)

    assert (first.outcome, first.response.body) == (Outcome.NEW, body)
    assert again.outcome is Outcome.REPLAYED
    assert (again.response.status, again.response.body) == (201, b"")
    assert ("idempotency-stored", "false") in again.response.headers
    assert runs == [1]


async def test_a_duplicate_in_flight_gets_the_configured_retry_after(memory: LeaseStore) -> None:
    request = IdempotentRequest("orders", "busy", "f")
    await memory.claim(request, utcnow(), timedelta(seconds=30), timedelta(hours=1))
    config = IdempotencyConfig(in_flight_wait=timedelta(0), retry_after_seconds=7)

    async def never() -> HandlerResult:
        raise AssertionError("a duplicate in flight must not run")

    with pytest.raises(RequestInFlight) as refused:
        await IdempotencyEngine(memory, config).execute_leased(request, never)
    assert refused.value.retry_after == 7


async def test_a_busy_store_without_an_estimate_gets_the_configured_retry_after(
    memory: LeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(*_args: object) -> None:
        raise StoreBusy("injected")

    monkeypatch.setattr(memory, "claim", busy)
    engine = IdempotencyEngine(memory, IdempotencyConfig(retry_after_seconds=9))

    async def never() -> HandlerResult:
        raise AssertionError("unreachable")

    with pytest.raises(StoreBusy) as refused:
        await engine.execute_leased(IdempotentRequest("orders", "k", "f"), never)
    assert refused.value.retry_after == 9


async def test_a_5xx_is_never_kept_whatever_store_status_says(memory: LeaseStore) -> None:
    config = IdempotencyConfig(store_status=lambda _status: True)

    async def failing() -> HandlerResult:
        return HandlerResult(StoredResponse.build(503, b"down", {}))

    result = await IdempotencyEngine(memory, config).execute_leased(
        IdempotentRequest("orders", "k", "f"), failing
    )
    assert result.outcome is Outcome.NOT_STORED


async def test_every_event_names_its_outcome_in_the_one_vocabulary(memory: LeaseStore) -> None:
    seen: list[IdempotencyEvent] = []
    engine = IdempotencyEngine(memory, listeners=[seen.append])

    async def ok() -> HandlerResult:
        return HandlerResult(StoredResponse.build(200, b"ok", {}))

    request = IdempotentRequest("orders", "k", "f")
    await engine.execute_leased(request, ok)
    await engine.execute_leased(request, ok)

    assert [event.outcome for event in seen] == [Outcome.NEW, Outcome.REPLAYED]
    assert all(isinstance(event.outcome, Outcome) for event in seen)


def test_the_outcomes_keep_the_names_logs_metrics_and_statistics_store() -> None:
    assert [outcome.value for outcome in Outcome] == [
        "new",
        "takeover",
        "replayed",
        "not_stored",
        "lease_lost",
        "in_flight",
        "mismatch",
        "store_busy",
        "store_unavailable",
        "handler_error",
        "invalid_key",
    ]
    assert events.IN_FLIGHT == "in_flight"
    assert events.INVALID_KEY is Outcome.INVALID_KEY
