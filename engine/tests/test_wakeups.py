"""Duplicates waiting in another process are woken when the holder finishes, not by polling.

Two stores on one PostgreSQL database or one Redis, each with an engine, client and listener
of its own, as two processes would have: A holds a key, B's duplicate waits. Polling is slowed
to 2 s, so an answer within a fraction of that can only come from the wake-up. Then the
listener's connection is killed (``pg_terminate_backend``, ``CLIENT KILL``): waits finish by
polling, and the next wait opens the listener again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyConfig,
    IdempotencyEngine,
    IdempotentRequest,
    Outcome,
    StoredResponse,
    open_store,
)
from whatsorder_idempotency.stores.base import LeaseStore
from whatsorder_idempotency.stores.redis import RedisStore
from whatsorder_idempotency.stores.redis_wakeups import CLIENT_NAME
from whatsorder_idempotency.stores.sql import SqlStore
from whatsorder_idempotency.stores.sql.wakeups import APPLICATION_NAME
from whatsorder_idempotency.waits import Waits
from whatsorder_idempotency.wakeups import Wakeups, token, wakeups_of

ANSWER = StoredResponse(status=201, body=b"made once", headers=())
CONFIG = IdempotencyConfig(in_flight_wait=timedelta(seconds=8))
SLOW_POLL = 2.0  # seconds: an answer well within it came from a wake-up
WOKEN_WITHIN = 0.2  # seconds from the holder's release to the duplicate's answer


def two_kinds() -> list[pytest.ParameterSet]:
    return [
        pytest.param("postgres", marks=[pytest.mark.postgres], id="postgres"),
        pytest.param("redis", id="redis"),
    ]


@pytest.fixture(params=two_kinds())
def store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(
        "postgres_url" if request.param == "postgres" else "redis_url"
    )
    return url


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[tuple[LeaseStore, LeaseStore]]:
    """Stores A and B on one database (or Redis), each with its own connections."""
    if store_url.startswith("postgresql"):
        a, b = open_store(store_url), open_store(store_url)
        yield a, b
        await a.close()
        await b.close()
        return
    prefix = f"test-wakeups:{secrets.token_hex(8)}:"
    a, b = (RedisStore.from_url(store_url, prefix=prefix) for _ in range(2))
    yield a, b
    async for name in a.client.scan_iter(match=f"{prefix}*"):
        await a.client.delete(name)
    await a.close()
    await b.close()


def incoming(key: str) -> IdempotentRequest:
    return IdempotentRequest(scope="orders", key=key, fingerprint="f")


def heard_of(store: LeaseStore, key: str) -> bool:
    wakeups = wakeups_of(store)
    assert wakeups is not None
    return wakeups.hears(token("orders", key))


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.01)


class Holder:
    """A's request: claims the key, then answers (or fails) when the test says."""

    def __init__(self, store: LeaseStore, key: str, *, fails: bool = False) -> None:
        self.running = asyncio.Event()
        self.release = asyncio.Event()
        self.fails = fails
        engine = IdempotencyEngine(store, CONFIG)
        self.task = asyncio.ensure_future(engine.execute_leased(incoming(key), self.handler))

    async def handler(self) -> HandlerResult:
        self.running.set()
        await self.release.wait()
        if self.fails:
            raise RuntimeError("the holder's handler failed")
        return HandlerResult(ANSWER)


async def hold_and_wait(
    a: LeaseStore, b: LeaseStore, key: str, *, fails: bool = False
) -> tuple[Holder, asyncio.Future[tuple[float, Outcome]]]:
    """A holds ``key``; B's duplicate waits for it, its listener watching the key."""
    holder = Holder(a, key, fails=fails)
    await asyncio.wait_for(holder.running.wait(), 5)
    duplicate = asyncio.ensure_future(answered_at(IdempotencyEngine(b, CONFIG), key))
    await until(lambda: heard_of(b, key), "B's listener watches the key")
    return holder, duplicate


async def answered_at(engine: IdempotencyEngine[None], key: str) -> tuple[float, Outcome]:
    async def runs_again() -> HandlerResult:
        return HandlerResult(ANSWER)

    result = await engine.execute_leased(incoming(key), runs_again)
    return time.monotonic(), result.outcome


@pytest.fixture
def slow_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    for pause in ("FIRST_PAUSE", "LONGEST_PAUSE", "LONGEST_PAUSE_HEARD"):
        monkeypatch.setattr(Waits, pause, SLOW_POLL)


@pytest.mark.usefixtures("slow_polling")
async def test_a_duplicate_in_another_process_is_woken_when_the_holder_completes(
    stores: tuple[LeaseStore, LeaseStore], record_property: Callable[[str, object], None]
) -> None:
    a, b = stores
    holder, duplicate = await hold_and_wait(a, b, "K-done")

    released = time.monotonic()
    holder.release.set()
    answered, outcome = await asyncio.wait_for(duplicate, 10)

    assert (await holder.task).outcome is Outcome.NEW
    assert outcome is Outcome.REPLAYED
    woken = answered - released
    record_property("woken_after_ms", round(woken * 1000, 1))
    assert woken < WOKEN_WITHIN, f"the duplicate answered {woken:.3f} s after the completion"


@pytest.mark.usefixtures("slow_polling")
async def test_a_duplicate_in_another_process_is_woken_when_the_holder_fails(
    stores: tuple[LeaseStore, LeaseStore],
) -> None:
    a, b = stores
    holder, duplicate = await hold_and_wait(a, b, "K-failed", fails=True)

    released = time.monotonic()
    holder.release.set()
    answered, outcome = await asyncio.wait_for(duplicate, 10)

    with pytest.raises(RuntimeError):
        await holder.task
    assert outcome is Outcome.TAKEOVER  # the released claim is B's to run afresh
    assert answered - released < WOKEN_WITHIN


async def kill_listener(store: LeaseStore) -> int:
    """End the listener's connection from the server's side; how many were ended."""
    if isinstance(store, RedisStore):
        clients = await store.client.client_list(_type="pubsub")
        ours = [client["id"] for client in clients if client.get("name") == CLIENT_NAME]
        for client_id in ours:
            await store.client.client_kill_filter(_id=client_id)
        return len(ours)
    assert isinstance(store, SqlStore)
    dsn = store.engine.url.set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(dsn, timeout=5)
    try:
        ended: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
    finally:
        await admin.close()
    return ended


async def test_with_its_listener_killed_a_wait_finishes_by_polling_and_the_next_reopens_it(
    stores: tuple[LeaseStore, LeaseStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = stores
    # Polling while the listener is trusted is slow: a wait that trusted a dead one would show.
    monkeypatch.setattr(Waits, "LONGEST_PAUSE_HEARD", SLOW_POLL)
    holder, duplicate = await hold_and_wait(a, b, "K-1")
    await asyncio.sleep(0.5)  # B's look is in a long pause now, trusting its listener

    assert await kill_listener(b) == 1
    await until(lambda: not heard_of(b, "K-1"), "B sees its listener gone", within=2)
    released = time.monotonic()
    holder.release.set()
    answered, outcome = await asyncio.wait_for(duplicate, 10)

    assert outcome is Outcome.REPLAYED
    assert answered - released < 0.3  # polled every 50 ms at most: the listener was down
    await holder.task

    # The next wait, once the retry pause is over, opens the listener again and is woken by it.
    await asyncio.sleep(Wakeups.RETRY_AFTER)
    monkeypatch.setattr(Waits, "FIRST_PAUSE", SLOW_POLL)
    monkeypatch.setattr(Waits, "LONGEST_PAUSE", SLOW_POLL)
    holder, duplicate = await hold_and_wait(a, b, "K-2")
    released = time.monotonic()
    holder.release.set()
    answered, outcome = await asyncio.wait_for(duplicate, 10)

    assert outcome is Outcome.REPLAYED
    assert answered - released < WOKEN_WITHIN
    await holder.task


async def test_a_listener_that_cannot_open_leaves_waits_polling(
    stores: tuple[LeaseStore, LeaseStore],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = stores
    monkeypatch.setattr(Wakeups, "OPEN_TIMEOUT", 1e-6)  # every attempt to listen times out
    holder = Holder(a, "K-1")
    await asyncio.wait_for(holder.running.wait(), 5)
    with caplog.at_level(logging.WARNING, logger="whatsorder_idempotency"):
        duplicate = asyncio.ensure_future(answered_at(IdempotencyEngine(b, CONFIG), "K-1"))
        await asyncio.sleep(0.3)
        holder.release.set()
        _, outcome = await asyncio.wait_for(duplicate, 10)

    assert outcome is Outcome.REPLAYED
    assert (await holder.task).outcome is Outcome.NEW
    assert [r.message for r in caplog.records if "cannot listen" in r.message] != []


@pytest.mark.postgres
async def test_postgresql_announces_only_keys_somebody_waits_for_and_never_in_clear(
    postgres_url: str,
) -> None:
    a, b = open_store(postgres_url), open_store(postgres_url)
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    overhearing = await asyncpg.connect(dsn, timeout=5)
    heard: list[str] = []
    try:
        assert isinstance(a, SqlStore)
        channel = "idempotency_idempotency_records"
        await overhearing.add_listener(channel, lambda *message: heard.append(message[-1]))
        nobody_waits = Holder(a, "K-alone")
        await asyncio.wait_for(nobody_waits.running.wait(), 5)
        nobody_waits.release.set()
        await nobody_waits.task
        await asyncio.sleep(0.2)
        assert heard == []  # no NOTIFY: nobody held the key's advisory lock

        holder, duplicate = await hold_and_wait(a, b, "K-awaited")
        holder.release.set()
        await asyncio.wait_for(duplicate, 10)
        await until(lambda: heard != [], "the completion was announced")
        assert heard == [token("orders", "K-awaited")]
        assert "K-awaited" not in heard[0]
        await holder.task
    finally:
        await overhearing.close()
        await a.close()
        await b.close()


async def test_sqlite_has_no_wakeups_and_its_waits_poll(tmp_path: object) -> None:
    store = open_store(f"sqlite:///{tmp_path}/keys.db")
    try:
        assert wakeups_of(store) is None
    finally:
        await store.close()
