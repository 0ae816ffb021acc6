"""The idempotency state machine: one place that decides new, replay, mismatch or in flight.

Stores do the atomic steps; this module decides (DESIGN.md §3):

| record found                          | outcome                                  |
|---------------------------------------|------------------------------------------|
| none                                  | claimed: run the handler, store          |
| completed, same fingerprint           | replay the stored response               |
| completed, other fingerprint          | ``FingerprintMismatch`` (422)            |
| in progress, lease live               | ``RequestInFlight`` (409)                |
| in progress with a dead lease, or     | take over (the epoch grows) and run      |
| completed but expired                 |                                          |

A handler's 5xx or exception rolls back the claim with its own writes: nothing is kept and the
retry processes afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar, cast

from whatsorder.idempotency import events
from whatsorder.idempotency.config import IdempotencyConfig
from whatsorder.idempotency.errors import (
    FingerprintMismatch,
    IdempotencyError,
    RequestInFlight,
    StoreBusy,
    StoreUnavailable,
    TransactionConflict,
)
from whatsorder.idempotency.events import IdempotencyEvent, Listener
from whatsorder.idempotency.record import (
    HandlerResult,
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
    utcnow,
)
from whatsorder.idempotency.stores.base import (
    Claimed,
    LeaseStore,
    StoreTransaction,
    TransactionalStore,
)

ContextT = TypeVar("ContextT")
log = logging.getLogger("whatsorder.idempotency")
Handler = Callable[[ContextT], Awaitable[HandlerResult]]

# Races lost in a row before giving up (each loss means another request just changed the record).
MAX_CLAIM_ATTEMPTS = 3
# Runs of one transaction that lost a race (deadlock, serialization, a unique key taken
# meanwhile): each loss rolled everything back, so running again is safe; the last loss is a 503.
MAX_TRANSACTION_RUNS = 4


class Outcome(enum.StrEnum):
    NEW = "new"
    TAKEOVER = "takeover"
    REPLAYED = "replayed"
    NOT_STORED = "not_stored"
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class Result:
    """The response to send, and how it came about."""

    response: StoredResponse
    outcome: Outcome

    @property
    def replayed(self) -> bool:
        return self.outcome is Outcome.REPLAYED


class _Discard(Exception):
    """Raised inside the transaction so it rolls back; carries the response to send anyway."""

    def __init__(self, response: StoredResponse) -> None:
        super().__init__("response not stored")
        self.response = response


class IdempotencyEngine(Generic[ContextT]):
    """Runs a handler at most once per (scope, key) and replays its response afterwards.

    Two modes, one set of decisions. *Transactional* (``execute``, a ``TransactionalStore``):
    claim, the handler's own writes and completion commit as one transaction. *Lease*
    (``execute_leased``, a ``LeaseStore`` apart from the application's data): the claim is a
    lease with a fencing epoch, renewed by heartbeat while the handler runs.
    """

    def __init__(
        self,
        store: TransactionalStore[ContextT] | LeaseStore,
        config: IdempotencyConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self.store = store
        self.config = config or IdempotencyConfig()
        self._clock = clock
        self.listeners = tuple(listeners)
        # isinstance on a runtime-checkable Protocol walks its members: ~10% of a replay's CPU
        # when done per request (py-spy, bench/), so it is done once here.
        self._transactional = isinstance(store, TransactionalStore)
        self._waits = _Waits(self.config, self._clock)
        self._leased = isinstance(store, LeaseStore)
        # A transactional store that can read the committed record first, on the connection
        # its transaction then uses (SqlStore), answers a replay with that one read: no BEGIN,
        # no lock_timeout, no claim INSERT, and on SQLite no wait for the write lock.
        self._read_first: (
            Callable[
                [str, str],
                AbstractAsyncContextManager[IdempotencyRecord | StoreTransaction[ContextT]],
            ]
            | None
        ) = getattr(store, "read_then_transaction", None) if self._transactional else None

    async def execute(self, request: IdempotentRequest, handler: Handler[ContextT]) -> Result:
        """Claim the key, run ``handler`` in the claim's transaction, store and return its answer.

        Raises ``FingerprintMismatch``, ``RequestInFlight``, ``StoreBusy`` or
        ``StoreUnavailable``; exceptions of the handler propagate after the rollback.
        """
        if not self._transactional:
            raise TypeError(f"{type(self.store).__name__} has no transactions: use execute_leased")
        store = cast(TransactionalStore[ContextT], self.store)
        with _Watch(self.listeners, request) as watch:
            for run in range(1, MAX_TRANSACTION_RUNS + 1):
                try:
                    return watch.done(await self._execute(store, request, handler, watch))
                except TransactionConflict as conflict:
                    if run == MAX_TRANSACTION_RUNS:
                        raise
                    log.info("transaction rerun", extra={"reason": str(conflict), "run": run})
                    # Jittered, so two transactions that deadlocked do not meet again at once.
                    await asyncio.sleep(random.uniform(0.002, 0.010) * run)
            raise AssertionError("unreachable")  # the last run returned or raised

    async def _execute(
        self,
        store: TransactionalStore[ContextT],
        request: IdempotentRequest,
        handler: Handler[ContextT],
        watch: _Watch,
    ) -> Result:
        try:
            if self._read_first is not None:
                # One pooled connection: a completed key is answered by one read of the
                # committed record; anything else (absent, or lease mode's claim in flight)
                # goes on to the transaction on that same connection.
                async with self._read_first(request.scope, request.key) as opened:
                    if not isinstance(opened, IdempotencyRecord):
                        return await self._run_in(opened, request, handler, watch)
                    decision = self._decide(opened, request, self._clock())
                    if isinstance(decision, StoredResponse):
                        watch.looked_up()
                        return Result(decision, Outcome.REPLAYED)
                # Completed but expired: claimed afresh below, under the row lock.
            async with store.transaction() as transaction:
                return await self._run_in(transaction, request, handler, watch)
        except _Discard as discarded:
            return Result(discarded.response, Outcome.NOT_STORED)

    async def _run_in(
        self,
        transaction: StoreTransaction[ContextT],
        request: IdempotentRequest,
        handler: Handler[ContextT],
        watch: _Watch,
    ) -> Result:
        claim = await self._claim_in(transaction, request)
        watch.looked_up()
        if isinstance(claim, StoredResponse):
            return Result(claim, Outcome.REPLAYED)
        result = await handler(transaction.context)
        response = result.response
        if not result.keep or not self.config.stores_status(response.status):
            raise _Discard(response)
        completed = await transaction.complete(
            request, claim.epoch, response, result.annotations, self._clock(), self.config.ttl
        )
        if not completed:  # only a lease-mode take-over can fence us out here
            raise _Discard(response)
        return Result(response, Outcome.TAKEOVER if claim.takeover else Outcome.NEW)

    async def _claim_in(
        self, transaction: StoreTransaction[ContextT], request: IdempotentRequest
    ) -> Claimed | StoredResponse:
        for _ in range(MAX_CLAIM_ATTEMPTS):
            now = self._clock()
            if await transaction.insert_claim(request, now, self.config.lease):
                return Claimed(epoch=1, takeover=False)
            record = await transaction.load(request.scope, request.key)
            if record is None:
                continue  # removed between our insert and our read (cleanup): insert again
            decision = self._decide(record, request, now)
            if isinstance(decision, StoredResponse):
                return decision
            if decision is _IN_FLIGHT:
                raise self._in_flight()
            epoch = await transaction.take_over(record, request, now, self.config.lease)
            if epoch is not None:
                return Claimed(epoch=epoch, takeover=True)
        raise StoreBusy("The idempotency key is heavily contended; retry.", retry_after=1)

    async def execute_leased(
        self, request: IdempotentRequest, handler: Callable[[], Awaitable[HandlerResult]]
    ) -> Result:
        """Lease mode: claim, run ``handler`` while renewing the lease, then store its answer.

        A duplicate in flight is waited for (``in_flight_wait``) and then replayed, or gets
        ``RequestInFlight``. A handler that raises or answers 5xx releases its claim.
        """
        if not self._leased:
            raise TypeError(f"{type(self.store).__name__} is not a lease store: use execute")
        lease_store = cast(LeaseStore, self.store)
        with _Watch(self.listeners, request) as watch:
            return watch.done(await self._execute_leased(lease_store, request, handler, watch))

    async def _execute_leased(
        self,
        lease_store: LeaseStore,
        request: IdempotentRequest,
        handler: Callable[[], Awaitable[HandlerResult]],
        watch: _Watch,
    ) -> Result:
        claim = await self._claim_lease(lease_store, request)
        watch.looked_up()
        if isinstance(claim, StoredResponse):
            return Result(claim, Outcome.REPLAYED)
        try:
            return await self._hold(lease_store, request, handler, claim)
        finally:
            # Duplicates waiting in this process look at once instead of at their next poll.
            self._waits.wake(request.scope, request.key)

    async def _hold(
        self,
        lease_store: LeaseStore,
        request: IdempotentRequest,
        handler: Callable[[], Awaitable[HandlerResult]],
        claim: Claimed,
    ) -> Result:
        heartbeat = _Heartbeat(lease_store, request, claim.epoch, self.config, self._clock)
        try:
            async with heartbeat:
                result = await handler()
        except BaseException:
            await self._settle(lease_store.release(request.scope, request.key, claim.epoch))
            raise
        response = result.response
        if not result.keep or not self.config.stores_status(response.status):
            await self._settle(lease_store.release(request.scope, request.key, claim.epoch))
            return Result(response, Outcome.NOT_STORED)
        completed = await self._settle(
            lease_store.complete(request, claim.epoch, response, self._clock(), self.config.ttl)
        )
        if completed is None:
            return Result(response, Outcome.NOT_STORED)
        if not completed:
            # Our lease was taken over while we ran: the new holder's result stands.
            log.warning("lease lost before completion; the response was not stored")
            return Result(response, Outcome.LEASE_LOST)
        return Result(response, Outcome.TAKEOVER if claim.takeover else Outcome.NEW)

    async def _settle(self, step: Awaitable[bool]) -> bool | None:
        """Finish a store step after the handler ran, even if the request is being cancelled.

        The handler's work is done and must not be repeated, so a store failure here is
        logged, not raised: the response still goes out (the lease expires by itself).
        """
        try:
            return await asyncio.shield(asyncio.ensure_future(step))
        except IdempotencyError as error:
            log.warning("idempotency store step failed after the handler ran: %s", error)
            return None

    async def _claim_lease(
        self, store: LeaseStore, request: IdempotentRequest
    ) -> Claimed | StoredResponse:
        deadline = time.monotonic() + self.config.in_flight_wait.total_seconds()
        while True:
            now = self._clock()
            found = await store.claim(request, now, self.config.lease, self.config.ttl)
            if isinstance(found, Claimed):
                return found
            decision = self._decide(found, request, now)
            if isinstance(decision, StoredResponse):
                return decision
            # In flight (a dead lease or an expired record would have been taken over).
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._in_flight()
            changed = await self._waits.until_changed(store, request, remaining)
            if changed is not None and changed.status is Status.COMPLETED:
                decision = self._decide(changed, request, self._clock())
                if isinstance(decision, StoredResponse):
                    return decision
            # Released, taken over, gone, or still in flight: claim (or look) again.

    def _decide(
        self, record: IdempotencyRecord, request: IdempotentRequest, now: datetime
    ) -> StoredResponse | object:
        """Replay, refuse, wait, or take over: the one table of DESIGN.md §3."""
        if record.can_be_taken_over(now):
            return _TAKE_OVER
        if record.status is Status.COMPLETED:
            if record.fingerprint != request.fingerprint:
                raise FingerprintMismatch(
                    "This idempotency key was already used with a different request."
                )
            assert record.response is not None
            return record.response
        return _IN_FLIGHT

    def _in_flight(self) -> RequestInFlight:
        return RequestInFlight(
            "Another request with this idempotency key is still being processed.",
            retry_after=self.config.retry_after_seconds,
        )


class _Watch:
    """Times one request and reports its outcome to the listeners, whichever way it ends."""

    def __init__(self, listeners: tuple[Listener, ...], request: IdempotentRequest) -> None:
        self._listeners = listeners
        self._request = request
        self._started = time.perf_counter()
        self._lookup: float | None = None
        self._outcome: str | None = None

    def looked_up(self) -> None:
        self._lookup = time.perf_counter() - self._started

    def done(self, result: Result) -> Result:
        self._outcome = result.outcome.value
        return result

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        if not self._listeners:
            return
        outcome = self._outcome or next(
            (name for kind, name in _ERROR_OUTCOMES.items() if isinstance(error, kind)),
            events.HANDLER_ERROR,
        )
        total = time.perf_counter() - self._started
        event = IdempotencyEvent(
            scope=self._request.scope,
            outcome=outcome,
            key_hash=events.key_hash(self._request.key),
            lookup_seconds=self._lookup if self._lookup is not None else total,
            total_seconds=total,
        )
        events.notify(self._listeners, event)


_ERROR_OUTCOMES: dict[type[BaseException], str] = {
    FingerprintMismatch: events.MISMATCH,
    RequestInFlight: events.IN_FLIGHT,
    StoreBusy: events.STORE_BUSY,
    StoreUnavailable: events.STORE_UNAVAILABLE,
}


class _Waits:
    """Duplicates of keys in flight, in this process: one look at the store per key for all.

    A storm's copies that land on one process would each poll the store; here one task per key
    polls (every 5 ms at first, then up to every 50 ms, cheap because it is one), and all the
    copies await it. When this process's own holder finishes, the look happens at once.
    """

    FIRST_PAUSE = 0.005
    LONGEST_PAUSE = 0.05

    def __init__(self, config: IdempotencyConfig, clock: Callable[[], datetime]) -> None:
        self._config = config
        self._clock = clock
        self._looks: dict[tuple[str, str], asyncio.Future[IdempotencyRecord | None]] = {}
        self._wakeups: dict[tuple[str, str], asyncio.Event] = {}

    async def until_changed(
        self, store: LeaseStore, request: IdempotentRequest, patience: float
    ) -> IdempotencyRecord | None:
        """The record once it is no longer in flight (None: gone), or None after ``patience``."""
        key = (request.scope, request.key)
        look = self._looks.get(key)
        if look is None or look.get_loop() is not asyncio.get_running_loop():
            look = asyncio.ensure_future(self._look(store, key))
            self._looks[key] = look
            look.add_done_callback(lambda done: self._forget(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(look), patience)
        except TimeoutError:
            return None

    def wake(self, scope: str, key: str) -> None:
        wakeup = self._wakeups.get((scope, key))
        if wakeup is not None:
            wakeup.set()

    async def _look(self, store: LeaseStore, key: tuple[str, str]) -> IdempotencyRecord | None:
        wakeup = self._wakeups[key] = asyncio.Event()  # this loop's; one look per key at a time
        until = time.monotonic() + self._config.in_flight_wait.total_seconds()
        pause = self.FIRST_PAUSE
        try:
            while (left := until - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(pause, left))
                wakeup.clear()
                record = await store.get(*key)
                if record is None or record.status is Status.COMPLETED:
                    return record
                if record.can_be_taken_over(self._clock()):
                    return record
                pause = min(pause * 2, self.LONGEST_PAUSE)
            return None
        finally:
            if self._wakeups.get(key) is wakeup:
                del self._wakeups[key]

    def _forget(self, key: tuple[str, str], done: asyncio.Future[IdempotencyRecord | None]) -> None:
        if self._looks.get(key) is done:
            del self._looks[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter gets it from its own await


_IN_FLIGHT = object()
_TAKE_OVER = object()


class _Heartbeat:
    """Renews the lease every third of its length while the handler runs."""

    def __init__(
        self,
        store: LeaseStore,
        request: IdempotentRequest,
        epoch: int,
        config: IdempotencyConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._request = request
        self._epoch = epoch
        self._config = config
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.lost = False

    async def __aenter__(self) -> _Heartbeat:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _beat(self) -> None:
        interval = self._config.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            until = self._clock() + self._config.lease
            try:
                renewed = await self._store.renew(
                    self._request.scope, self._request.key, self._epoch, until
                )
            except Exception as error:  # a hiccup: try again next beat while the lease lasts
                log.warning("lease renewal failed: %s", type(error).__name__)
                continue
            if not renewed:
                self.lost = True
                return
