"""The heartbeat keeps a live holder's lease through slow, failing and even hung renewals.

A lease is short (4 s by default) because a live holder renews it four times per lease; these
tests show the beat going on when one renewal hangs, fails or is blocked, and ending only when
the store refuses it (the holder was fenced out).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

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
from whatsorder_idempotency.config import DEFAULT_IN_FLIGHT_WAIT, DEFAULT_LEASE
from whatsorder_idempotency.errors import StoreUnavailable
from whatsorder_idempotency.lease import Heartbeat
from whatsorder_idempotency.record import as_utc, utcnow
from whatsorder_idempotency.stores.base import LeaseStore

ANSWER = StoredResponse(status=201, body=b"made", headers=())
REQUEST = IdempotentRequest("orders", "K-1", "f")


def test_the_default_lease_is_renewed_every_second_and_outwaited_by_a_duplicate() -> None:
    assert DEFAULT_LEASE.total_seconds() == 4
    assert Heartbeat.interval(DEFAULT_LEASE) == 1.0
    assert Heartbeat.RENEWAL_PATIENCE < 1  # a renewal is given up before the next beat is due
    # A duplicate arriving after its holder died waits the dead lease out and takes over.
    assert DEFAULT_LEASE < DEFAULT_IN_FLIGHT_WAIT


class StuckRenewals:
    """A memory store whose renewals are scripted: ``hang`` (cancelling does not end it
    either, as when closing a dead connection hangs too), ``fail`` or ``refuse``; then real."""

    def __init__(self, inner: LeaseStore, script: list[str]) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.script = script
        self.renewals = 0
        self.unstuck = asyncio.Event()
        self.claim = inner.claim
        self.get = inner.get
        self.complete = inner.complete
        self.release = inner.release

    async def renew(self, scope: str, key: str, epoch: int, locked_until: datetime) -> bool:
        self.renewals += 1
        step = self.script.pop(0) if self.script else "renew"
        if step == "hang":
            with contextlib.suppress(asyncio.CancelledError):
                await self.unstuck.wait()
            await self.unstuck.wait()
        if step == "fail":
            raise StoreUnavailable("the store is away")
        if step == "refuse":
            return False
        return await self.inner.renew(scope, key, epoch, locked_until)

    async def close(self) -> None:
        self.unstuck.set()
        await asyncio.sleep(0)  # lets a hung renewal end before its loop does
        await self.inner.close()


@pytest.fixture
async def stuck() -> AsyncIterator[StuckRenewals]:
    store = StuckRenewals(open_store("memory://"), [])
    yield store
    await store.close()


@pytest.mark.parametrize("first_renewal", ["hang", "fail"])
async def test_a_renewal_that_hangs_or_fails_does_not_stop_the_next_ones(
    stuck: StuckRenewals, first_renewal: str
) -> None:
    stuck.script = [first_renewal]
    lease = timedelta(seconds=1)
    engine = IdempotencyEngine(stuck, IdempotencyConfig(lease=lease))
    runs: list[int] = []

    async def handler() -> HandlerResult:
        runs.append(1)
        await asyncio.sleep(2.0)
        return HandlerResult(ANSWER)

    asyncio.get_running_loop().call_later(5, stuck.unstuck.set)  # bounds a heartbeat that waits
    holder = asyncio.create_task(engine.execute_leased(REQUEST, handler))
    await asyncio.sleep(1.4)  # past the lease set at the claim: only later renewals hold it
    duplicate = await engine.execute_leased(REQUEST, handler)

    assert (await asyncio.wait_for(holder, 10)).outcome is Outcome.NEW
    assert duplicate.outcome is Outcome.REPLAYED
    assert runs == [1]
    assert stuck.renewals >= 5, f"{stuck.renewals} renewals in 2 s, one every 0.25 s due"


async def test_a_refused_renewal_ends_the_beat(stuck: StuckRenewals) -> None:
    stuck.script = ["refuse"]
    await stuck.claim(REQUEST, utcnow(), timedelta(seconds=0.2), timedelta(hours=1))

    async with Heartbeat(stuck, REQUEST, 1, timedelta(seconds=0.2), utcnow):
        await asyncio.sleep(0.5)  # ten beats were due

    assert stuck.renewals == 1


@pytest.mark.slow
@pytest.mark.postgres
async def test_renewals_blocked_on_postgresql_are_abandoned_and_the_beat_renews_afterwards(
    postgres_url: str,
) -> None:
    """Another session locks the record (as a long cleanup batch could): the renewals meanwhile
    are cancelled on time, and once the lock goes the next beat renews on the same pool."""
    lease = timedelta(seconds=2)
    store = open_store(postgres_url)
    engine = IdempotencyEngine(store, IdempotencyConfig(lease=lease))
    running = asyncio.Event()

    async def handler() -> HandlerResult:
        running.set()
        await asyncio.sleep(3.5)
        return HandlerResult(ANSWER)

    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    locker = await asyncpg.connect(dsn, timeout=5)
    try:
        holder = asyncio.create_task(engine.execute_leased(REQUEST, handler))
        await asyncio.wait_for(running.wait(), 10)
        async with locker.transaction():
            await locker.execute(
                "SELECT 1 FROM idempotency_records WHERE idempotency_key = $1 FOR UPDATE", "K-1"
            )
            await asyncio.sleep(1.2)  # two or three beats, each blocked and given up
        unlocked_at = utcnow()
        await asyncio.sleep(Heartbeat.interval(lease) * 2)
        record = await store.get(REQUEST.scope, REQUEST.key)
        result = await asyncio.wait_for(holder, 10)
        waiting = await locker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
    finally:
        await locker.close()
        await store.close()

    assert record is not None
    assert record.locked_until is not None
    renewed_after = (as_utc(record.locked_until) - lease - unlocked_at).total_seconds()
    assert renewed_after > 0, f"last renewal began {-renewed_after:.2f} s before the unlock"
    assert result.outcome is Outcome.NEW
    assert waiting == 0  # the abandoned renewals were cancelled on the server too


async def test_a_heartbeat_ends_at_once_even_while_a_renewal_hangs(stuck: StuckRenewals) -> None:
    stuck.script = ["hang"]
    lease = timedelta(seconds=0.4)
    await stuck.claim(REQUEST, utcnow(), lease, timedelta(hours=1))
    started = time.monotonic()

    async with Heartbeat(stuck, REQUEST, 1, lease, utcnow):
        await asyncio.sleep(0.15)  # the first beat (at 0.1 s) hangs

    assert time.monotonic() - started < 0.5  # leaving did not wait for the hung renewal
