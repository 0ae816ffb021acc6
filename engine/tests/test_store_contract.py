"""One contract for every lease store: memory, SQLite, PostgreSQL and Redis behave the same.

The store tests drive each store's steps with an explicit ``now``, so time is the test's to
move; the engine tests run ``IdempotencyEngine.execute_leased`` on the real clock. Redis tests
use REDIS_URL (WHATSORDER_TEST_REDIS_URL) with keys under a prefix of their own; under CI=true
an unreachable Redis fails them, elsewhere they are skipped with a message saying how to run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import string
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import exceptions as redis_errors

from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyConfig,
    IdempotencyEngine,
    IdempotencyRecord,
    IdempotentRequest,
    Outcome,
    Status,
    StoredResponse,
    open_store,
)
from whatsorder_idempotency.errors import StoreUnavailable
from whatsorder_idempotency.record import as_utc
from whatsorder_idempotency.stores.base import Claimed, LeaseStore
from whatsorder_idempotency.stores.redis import RedisStore
from whatsorder_idempotency.stores.sql import SqlStore
from whatsorder_idempotency.waits import Waits

REDIS_URL = os.environ.get("WHATSORDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

NOW = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)  # microseconds, to check precision
LEASE = timedelta(seconds=30)
TTL = timedelta(hours=24)
TICK = timedelta(microseconds=1)
TWIML = StoredResponse(
    status=201,
    body=b"<Response>caf\xc3\xa9 \x00\xff\xfe\x80</Response>",  # not UTF-8: kept byte for byte
    headers=(("content-type", "application/xml"), ("location", "/orders/7")),
)
OTHER = StoredResponse(status=200, body=b"the new holder's answer", headers=())


STORES = ("memory", "sqlite", "postgres", "redis")


def every_store() -> list[pytest.ParameterSet]:
    return [
        pytest.param(kind, marks=[pytest.mark.postgres] if kind == "postgres" else [], id=kind)
        for kind in STORES
    ]


@pytest.fixture(params=every_store())
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    if request.param == "postgres":
        # A database of the test's own; its idempotency_records table is this store's.
        url: str = request.getfixturevalue("postgres_url")
        return url
    return REDIS_URL


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[LeaseStore]:
    """The store under test, empty; Redis keys live under a prefix of the test's own."""
    if store_url != REDIS_URL:
        opened = open_store(store_url)
        yield opened
        await opened.close()
        return
    prefix = f"test-idempotency:{secrets.token_hex(8)}:"
    redis_store = RedisStore.from_url(REDIS_URL, prefix=prefix, socket_connect_timeout=2)
    try:
        await redis_store.client.ping()
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
        await redis_store.close()
        message = (
            f"Redis at {REDIS_URL} not reachable ({error}); start redis-server to run these tests"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield redis_store
    async for name in redis_store.client.scan_iter(match=f"{prefix}*"):
        await redis_store.client.delete(name)
    await redis_store.close()


def incoming(
    key: str = "SM-1", *, scope: str = "twilio-inbound", fingerprint: str = "f1"
) -> IdempotentRequest:
    return IdempotentRequest(scope=scope, key=key, fingerprint=fingerprint)


async def must_get(store: LeaseStore, scope: str, key: str) -> IdempotencyRecord:
    record = await store.get(scope, key)
    assert record is not None, f"no record for {scope!r}/{key!r}"
    return record


async def claim(
    store: LeaseStore, req: IdempotentRequest, now: datetime = NOW
) -> Claimed | IdempotencyRecord:
    return await store.claim(req, now, LEASE, TTL)


# --- the store contract, on the test's clock ------------------------------------------------


async def test_the_first_claim_creates_the_record_in_progress_at_epoch_1(
    store: LeaseStore,
) -> None:
    assert await claim(store, incoming()) == Claimed(epoch=1, takeover=False)

    record = await must_get(store, "twilio-inbound", "SM-1")
    assert record.status is Status.IN_PROGRESS
    assert record.epoch == 1
    assert record.fingerprint == "f1"
    assert record.locked_until is not None
    assert as_utc(record.locked_until) == NOW + LEASE
    assert record.response is None


async def test_a_second_claim_of_a_live_claim_returns_the_record_in_progress(
    store: LeaseStore,
) -> None:
    await claim(store, incoming())

    found = await claim(store, incoming(), NOW + LEASE - TICK)

    assert isinstance(found, IdempotencyRecord)
    assert (found.status, found.epoch, found.fingerprint) == (Status.IN_PROGRESS, 1, "f1")


async def test_a_claim_of_a_completed_key_returns_its_response_intact(store: LeaseStore) -> None:
    await claim(store, incoming())
    assert await store.complete(incoming(), 1, TWIML, NOW, TTL)

    found = await claim(store, incoming(fingerprint="other"), NOW + TTL - TICK)

    assert isinstance(found, IdempotencyRecord)
    assert found.status is Status.COMPLETED
    assert found.fingerprint == "f1"  # the engine compares it: 422 for "other"
    assert found.response == TWIML
    assert found.expires_at is not None
    assert as_utc(found.expires_at) == NOW + TTL


async def test_a_claim_after_expiry_takes_over_at_epoch_2(store: LeaseStore) -> None:
    await claim(store, incoming())
    await store.complete(incoming(), 1, TWIML, NOW, TTL)

    assert await claim(store, incoming(fingerprint="f2"), NOW + TTL) == Claimed(2, takeover=True)

    record = await must_get(store, "twilio-inbound", "SM-1")
    assert (record.status, record.epoch, record.fingerprint) == (Status.IN_PROGRESS, 2, "f2")
    assert record.response is None
    assert record.expires_at is None


async def test_a_claim_after_a_dead_lease_takes_over_with_the_next_epoch(
    store: LeaseStore,
) -> None:
    await claim(store, incoming())

    assert await claim(store, incoming(), NOW + LEASE) == Claimed(2, takeover=True)
    assert await claim(store, incoming(), NOW + 2 * LEASE) == Claimed(3, takeover=True)

    record = await must_get(store, "twilio-inbound", "SM-1")
    assert record.locked_until is not None
    assert as_utc(record.locked_until) == NOW + 3 * LEASE


async def test_a_stale_holder_can_neither_complete_renew_nor_release_after_a_take_over(
    store: LeaseStore,
) -> None:
    req = incoming()
    await claim(store, req)
    later = NOW + LEASE
    assert await claim(store, req, later) == Claimed(2, takeover=True)

    assert not await store.complete(req, 1, TWIML, later, TTL)
    assert not await store.renew(req.scope, req.key, 1, later + LEASE)
    assert not await store.release(req.scope, req.key, 1)
    assert await store.complete(req, 2, OTHER, later, TTL)
    assert not await store.complete(req, 1, TWIML, later, TTL)

    record = await must_get(store, req.scope, req.key)
    assert (record.status, record.epoch, record.response) == (Status.COMPLETED, 2, OTHER)


async def test_a_renewed_lease_is_not_taken_over_at_its_old_end(store: LeaseStore) -> None:
    req = incoming()
    await claim(store, req)

    assert await store.renew(req.scope, req.key, 1, NOW + 2 * LEASE)

    found = await claim(store, req, NOW + LEASE)
    assert isinstance(found, IdempotencyRecord)
    assert found.epoch == 1
    assert await claim(store, req, NOW + 2 * LEASE) == Claimed(2, takeover=True)


async def test_a_renewal_that_lands_after_a_later_one_does_not_move_the_lease_back(
    store: LeaseStore,
) -> None:
    """The heartbeat abandons a slow renewal and goes on; the abandoned one may still land."""
    req = incoming()
    await claim(store, req)
    assert await store.renew(req.scope, req.key, 1, NOW + 3 * LEASE)

    assert await store.renew(req.scope, req.key, 1, NOW + 2 * LEASE)  # still the holder

    record = await must_get(store, req.scope, req.key)
    assert record.locked_until is not None
    assert as_utc(record.locked_until) == NOW + 3 * LEASE
    found = await claim(store, req, NOW + 2 * LEASE)
    assert isinstance(found, IdempotencyRecord)


async def test_a_released_claim_ends_its_lease_and_its_holder_can_do_nothing_more(
    store: LeaseStore,
) -> None:
    req = incoming()
    await claim(store, req)

    assert await store.release(req.scope, req.key, 1)

    released = await store.get(req.scope, req.key)
    assert released is not None
    assert released.can_be_taken_over(NOW)  # the lease is over at once
    assert not await store.complete(req, 1, TWIML, NOW, TTL)
    assert not await store.renew(req.scope, req.key, 1, NOW + LEASE)
    assert not await store.release(req.scope, req.key, 1)
    assert await claim(store, req) == Claimed(2, takeover=True)  # the epoch never goes back


async def test_a_released_holder_cannot_complete_over_the_next_claim(store: LeaseStore) -> None:
    req = incoming()
    await claim(store, req)
    await store.release(req.scope, req.key, 1)
    await claim(store, req)

    assert not await store.complete(req, 1, TWIML, NOW, TTL)


async def test_a_completed_record_cannot_be_completed_again(store: LeaseStore) -> None:
    req = incoming()
    await claim(store, req)
    assert await store.complete(req, 1, TWIML, NOW, TTL)

    assert not await store.complete(req, 1, OTHER, NOW + LEASE, TTL)

    assert (await must_get(store, req.scope, req.key)).response == TWIML


async def test_the_same_key_in_two_scopes_does_not_collide(store: LeaseStore) -> None:
    # Joined naively with ":" these two would be the same name: "a:b:c".
    first = incoming("b:c", scope="a")
    second = incoming("c", scope="a:b")

    assert await claim(store, first) == Claimed(1, takeover=False)
    assert await claim(store, second) == Claimed(1, takeover=False)
    assert await store.complete(first, 1, TWIML, NOW, TTL)

    assert (await must_get(store, "a", "b:c")).status is Status.COMPLETED
    assert (await must_get(store, "a:b", "c")).status is Status.IN_PROGRESS
    assert await claim(store, incoming("SM-1", scope="stripe")) == Claimed(1, takeover=False)
    assert await claim(store, incoming("SM-1", scope="twilio")) == Claimed(1, takeover=False)


ODD_KEYS = [
    "a:b:c",
    "*",
    "?[ab]*",
    "{tag}",
    "}{",
    "\\",
    "%s%d",
    "'\"`",
    " leading and trailing ",
    string.punctuation,
    "x" * 255,
    "é" * 10,  # keys arrive as visible ASCII, but nothing here depends on it
]


async def test_keys_with_odd_characters_and_255_characters_work(store: LeaseStore) -> None:
    scope = "tenant:7/POST /orders*{x}"
    for key in ODD_KEYS:
        assert await claim(store, incoming(key, scope=scope)) == Claimed(1, takeover=False), key
    for key in ODD_KEYS:
        response = StoredResponse(status=200, body=key.encode(), headers=())
        assert await store.complete(incoming(key, scope=scope), 1, response, NOW, TTL), key

    for key in ODD_KEYS:
        record = await must_get(store, scope, key)
        assert (record.scope, record.key) == (scope, key)
        assert record.response is not None
        assert record.response.body == key.encode()
    assert await store.get(scope, "a") is None  # "*" and "?[ab]*" are no patterns


async def test_fifty_concurrent_claims_of_one_key_yield_one_claim(store: LeaseStore) -> None:
    results = await asyncio.gather(*(claim(store, incoming()) for _ in range(50)))

    assert [result for result in results if isinstance(result, Claimed)] == [Claimed(1, False)]
    assert all(
        isinstance(result, IdempotencyRecord) and result.epoch == 1
        for result in results
        if not isinstance(result, Claimed)
    )


async def test_fifty_concurrent_claims_of_a_dead_lease_yield_one_take_over(
    store: LeaseStore,
) -> None:
    await claim(store, incoming())

    results = await asyncio.gather(*(claim(store, incoming(), NOW + LEASE) for _ in range(50)))

    assert [result for result in results if isinstance(result, Claimed)] == [Claimed(2, True)]


async def take_over_after_a_stale_look(
    store: LeaseStore, stale: IdempotencyRecord, req: IdempotentRequest, now: datetime
) -> Claimed | IdempotencyRecord | None:
    """A take-over decided on ``stale``, a look at the record that stopped being true.

    The SQL store looks, then updates in the same transaction: its take-over is handed the
    stale look. Memory and Redis look and take over in one atomic step, so their attempt is a
    claim (which must look again).
    """
    if isinstance(store, SqlStore):
        async with store.transaction() as transaction:
            epoch = await transaction.take_over(stale, req, now, LEASE)
        return None if epoch is None else Claimed(epoch, takeover=True)
    return await store.claim(req, now, LEASE, TTL)


@pytest.mark.parametrize("holder_step", ["completes", "renews"])
async def test_a_take_over_decided_on_a_look_the_holder_then_outdated_is_refused(
    store: LeaseStore, holder_step: str
) -> None:
    """The holder was slow, not dead: between a take-over's look (the lease is over) and its
    write, the holder completes or renews. Its epoch is unchanged, so the fence alone would
    let the take-over through and run the handler a second time."""
    req = incoming()
    await claim(store, req)
    later = NOW + LEASE
    stale = await must_get(store, req.scope, req.key)
    assert stale.can_be_taken_over(later)
    if holder_step == "completes":
        assert await store.complete(req, 1, TWIML, later, TTL)
    else:
        assert await store.renew(req.scope, req.key, 1, later + LEASE)

    attempt = await take_over_after_a_stale_look(store, stale, req, later)

    assert not isinstance(attempt, Claimed)
    record = await must_get(store, req.scope, req.key)
    assert record.epoch == 1
    if holder_step == "completes":
        assert (record.status, record.response) == (Status.COMPLETED, TWIML)
        seen = await claim(store, req, later)
        assert isinstance(seen, IdempotencyRecord)
        assert seen.response == TWIML  # what a retry replays
    else:
        assert record.status is Status.IN_PROGRESS
        assert record.locked_until is not None
        assert as_utc(record.locked_until) == later + LEASE


# --- the engine in lease mode on every store, on the real clock ------------------------------


def leased(store: LeaseStore, config: IdempotencyConfig | None = None) -> IdempotencyEngine[None]:
    return IdempotencyEngine(store, config)


def answering(
    response: StoredResponse, *, delay: float = 0.0, calls: list[int]
) -> Callable[[], Awaitable[HandlerResult]]:
    """A handler that notes each run in ``calls``, sleeps ``delay`` and answers ``response``."""

    async def handler() -> HandlerResult:
        calls.append(len(calls) + 1)
        await asyncio.sleep(delay)
        return HandlerResult(response)

    return handler


async def test_a_handler_runs_once_and_the_second_call_is_replayed(store: LeaseStore) -> None:
    engine = leased(store)
    calls: list[int] = []

    first = await engine.execute_leased(incoming(), answering(TWIML, calls=calls))
    second = await engine.execute_leased(incoming(), answering(OTHER, calls=calls))

    assert calls == [1]
    assert (first.outcome, second.outcome) == (Outcome.NEW, Outcome.REPLAYED)
    assert second.response == TWIML


async def test_a_handler_that_raises_releases_its_claim_so_the_retry_runs(
    store: LeaseStore,
) -> None:
    engine = leased(store)

    async def crash() -> HandlerResult:
        raise RuntimeError("handler crashed")

    with pytest.raises(RuntimeError, match="handler crashed"):
        await engine.execute_leased(incoming(), crash)
    released = await store.get("twilio-inbound", "SM-1")
    assert released is not None
    assert released.can_be_taken_over(NOW)

    calls: list[int] = []
    retry = await engine.execute_leased(incoming(), answering(TWIML, calls=calls))
    assert (retry.outcome, calls) == (Outcome.TAKEOVER, [1])


async def test_a_handler_answering_503_is_not_stored_so_the_retry_runs(store: LeaseStore) -> None:
    engine = leased(store)
    calls: list[int] = []
    unavailable = StoredResponse(status=503, body=b"try later", headers=())

    first = await engine.execute_leased(incoming(), answering(unavailable, calls=calls))
    second = await engine.execute_leased(incoming(), answering(TWIML, calls=calls))

    assert first.outcome is Outcome.NOT_STORED
    assert first.response == unavailable
    assert second.outcome is Outcome.TAKEOVER  # the released claim, at a higher epoch
    assert calls == [1, 2]


class CountedLooks:
    """The store as it is, with its claims and looks (``get``) counted."""

    def __init__(self, inner: LeaseStore) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.looks = 0
        self.claims = 0
        self.renew = inner.renew
        self.complete = inner.complete
        self.release = inner.release
        self.close = inner.close

    async def claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta, ttl: timedelta
    ) -> Claimed | IdempotencyRecord:
        self.claims += 1
        return await self.inner.claim(request, now, lease, ttl)

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        self.looks += 1
        return await self.inner.get(scope, key)


async def test_duplicates_waiting_in_one_process_share_one_look_and_wake_when_the_holder_ends(
    store: LeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polls 2 s apart: answers within the handler's 0.2 s can only come from the wake-up.
    monkeypatch.setattr(Waits, "FIRST_PAUSE", 2.0)
    monkeypatch.setattr(Waits, "LONGEST_PAUSE", 2.0)
    counted = CountedLooks(store)
    engine = leased(counted, IdempotencyConfig(in_flight_wait=timedelta(seconds=5)))
    calls: list[int] = []
    running = asyncio.Event()

    async def handler() -> HandlerResult:
        calls.append(len(calls) + 1)
        running.set()
        await asyncio.sleep(0.2)
        return HandlerResult(TWIML)

    started = time.monotonic()
    holder = asyncio.ensure_future(engine.execute_leased(incoming(), handler))
    await running.wait()  # the holder has claimed and runs; fifty duplicates arrive in flight
    copies = await asyncio.gather(*(engine.execute_leased(incoming(), handler) for _ in range(50)))
    took = time.monotonic() - started
    await holder

    assert calls == [1]
    assert {copy.outcome for copy in copies} == {Outcome.REPLAYED}
    assert {copy.response for copy in copies} == {TWIML}
    # The holder's claim only: copies arriving while it holds the key here ask no store
    # (shared_claims.py), and share one look once it ends.
    assert counted.claims == 1, f"{counted.claims} claims for the holder and 50 copies"
    assert counted.looks <= 2, f"{counted.looks} looks for 50 waiting copies"
    assert took < 1.5, f"the copies were answered {took:.2f} s after the holder began"


class SlowClaims(CountedLooks):
    """Each claim takes ``pause`` before the store sees it; the first ``failures`` fail."""

    def __init__(self, inner: LeaseStore, pause: float, failures: int = 0) -> None:
        super().__init__(inner)
        self.pause = pause
        self.failures = failures

    async def claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta, ttl: timedelta
    ) -> Claimed | IdempotencyRecord:
        self.claims += 1
        await asyncio.sleep(self.pause)
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("The store cannot be reached.")
        return await self.inner.claim(request, now, lease, ttl)


async def test_copies_arriving_together_share_one_claim_and_run_the_handler_once(
    store: LeaseStore,
) -> None:
    counted = SlowClaims(store, pause=0.05)
    engine = leased(counted, IdempotencyConfig(in_flight_wait=timedelta(seconds=5)))
    calls: list[int] = []

    copies = await asyncio.gather(
        *(
            engine.execute_leased(incoming(), answering(TWIML, delay=0.1, calls=calls))
            for _ in range(30)
        )
    )

    assert calls == [1]
    assert sorted(copy.outcome for copy in copies) == sorted(
        [Outcome.NEW] + [Outcome.REPLAYED] * 29
    )
    assert counted.claims == 1, f"{counted.claims} claims for 30 copies arriving together"


async def test_a_shared_claim_that_fails_fails_the_copies_waiting_on_it_and_the_next_claims(
    store: LeaseStore,
) -> None:
    counted = SlowClaims(store, pause=0.05, failures=1)
    engine = leased(counted, IdempotencyConfig(in_flight_wait=timedelta(seconds=5)))
    calls: list[int] = []

    copies = await asyncio.gather(
        *(
            engine.execute_leased(incoming(), answering(TWIML, delay=0.1, calls=calls))
            for _ in range(10)
        ),
        return_exceptions=True,
    )

    # One claim, and its failure for all ten: none waited out a timeout of its own.
    assert all(isinstance(copy, StoreUnavailable) for copy in copies), copies
    assert counted.claims == 1
    assert calls == []
    # Nothing of it is kept: the retry claims afresh and runs.
    retried = await engine.execute_leased(incoming(), answering(TWIML, calls=calls))
    assert retried.outcome is Outcome.NEW
    assert calls == [1]


async def test_a_cancelled_first_copy_leaves_the_key_to_the_others(store: LeaseStore) -> None:
    counted = SlowClaims(store, pause=0.2)
    engine = leased(counted, IdempotencyConfig(in_flight_wait=timedelta(seconds=5)))
    calls: list[int] = []
    handler = answering(TWIML, delay=0.05, calls=calls)

    first = asyncio.ensure_future(engine.execute_leased(incoming(), handler))
    await asyncio.sleep(0.05)  # its claim is on its way
    others = [asyncio.ensure_future(engine.execute_leased(incoming(), handler)) for _ in range(5)]
    await asyncio.sleep(0.01)
    first.cancel()  # before its claim reached the store
    answers = await asyncio.gather(*others)

    assert first.cancelled()
    assert calls == [1]
    assert sorted(answer.outcome for answer in answers) == sorted(
        [Outcome.NEW] + [Outcome.REPLAYED] * 4
    )


async def test_twenty_concurrent_duplicates_run_the_handler_once(store: LeaseStore) -> None:
    engine = leased(store, IdempotencyConfig(in_flight_wait=timedelta(seconds=5)))
    calls: list[int] = []
    handler = answering(TWIML, delay=0.2, calls=calls)

    results = await asyncio.gather(*(engine.execute_leased(incoming(), handler) for _ in range(20)))

    assert calls == [1]
    assert {result.response for result in results} == {TWIML}
    assert sorted(result.outcome for result in results) == sorted(
        [Outcome.NEW] + [Outcome.REPLAYED] * 19
    )


async def test_the_heartbeat_keeps_a_slow_handler_from_being_taken_over(
    store: LeaseStore,
) -> None:
    config = IdempotencyConfig(lease=timedelta(seconds=0.3), in_flight_wait=timedelta(seconds=5))
    engine = leased(store, config)
    calls: list[int] = []
    handler = answering(TWIML, delay=1.0, calls=calls)

    first = asyncio.create_task(engine.execute_leased(incoming(), handler))
    await asyncio.sleep(0.6)  # twice the lease: only renewals keep the claim alive
    duplicate = await engine.execute_leased(incoming(), handler)

    assert (await first).outcome is Outcome.NEW
    assert duplicate.outcome is Outcome.REPLAYED
    assert duplicate.response == TWIML
    assert calls == [1]


@pytest.mark.parametrize(
    "store_url", [p for p in every_store() if p.id != "memory"], indirect=True
)  # a frozen second event loop needs a store that two threads can share
async def test_a_paused_holder_that_wakes_after_a_take_over_cannot_overwrite_the_new_result(
    store_url: str, store: LeaseStore
) -> None:
    """Holder A's whole process freezes (a blocked event loop: no heartbeat can run) past its
    lease; B takes over and answers; A wakes and finishes, but its result is not stored."""
    config = IdempotencyConfig(lease=timedelta(seconds=0.3), in_flight_wait=timedelta(seconds=0))
    a_claimed = threading.Event()
    b_done = threading.Event()
    outcome_of_a: list[Outcome] = []

    def holder_a() -> None:
        async def run() -> None:
            own_store: LeaseStore = (
                RedisStore.from_url(REDIS_URL, prefix=store.prefix)
                if isinstance(store, RedisStore)
                else open_store(store_url)
            )

            async def frozen_handler() -> HandlerResult:
                a_claimed.set()
                time.sleep(0.8)  # noqa: ASYNC251 (the point: the whole loop stops, as in a GC pause)
                b_done.wait(timeout=10)
                return HandlerResult(TWIML)

            try:
                result = await leased(own_store, config).execute_leased(incoming(), frozen_handler)
                outcome_of_a.append(result.outcome)
            finally:
                await own_store.close()

        asyncio.run(run())

    thread = threading.Thread(target=holder_a)
    thread.start()
    assert await asyncio.to_thread(a_claimed.wait, 10)
    await asyncio.sleep(0.5)  # past A's lease, which A cannot renew while frozen

    b = await leased(store, config).execute_leased(incoming(), answering(OTHER, calls=[]))
    b_done.set()
    await asyncio.to_thread(thread.join, 15)

    assert b.outcome is Outcome.TAKEOVER
    assert outcome_of_a == [Outcome.LEASE_LOST]
    final = await must_get(store, "twilio-inbound", "SM-1")
    assert final.response == OTHER  # the new holder's answer stands
    assert final.epoch == 2


async def test_an_application_column_with_a_python_default_gets_it_on_every_claim(
    tmp_path: Path,
) -> None:
    """A lease's claim runs past SQLAlchemy only where SQLAlchemy computes nothing at execution
    (lone.py): an extra column with a Python-side default still gets its value."""
    from sqlalchemy import Column, MetaData, String, select

    from whatsorder_idempotency import SqlStore, idempotency_table, sql_engine

    table = idempotency_table(
        MetaData(), extra_columns=[Column("note", String(16), default=lambda: "by default")]
    )
    store = SqlStore(sql_engine(f"sqlite:///{tmp_path}/defaults.db"), table, create_table=True)
    try:
        claimed = await store.claim(
            incoming(), datetime.now(UTC), timedelta(seconds=4), TTL_FOR_DEFAULTS
        )
        assert isinstance(claimed, Claimed)
        async with store.engine.connect() as connection:
            assert (await connection.execute(select(table.c.note))).scalar_one() == "by default"
    finally:
        await store.close()


TTL_FOR_DEFAULTS = timedelta(hours=1)
