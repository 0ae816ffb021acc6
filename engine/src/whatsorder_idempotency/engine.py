"""The idempotency engine: claim the key, run the handler at most once, replay its answer.

Stores do the atomic steps; ``decision.py`` holds the table of what a found record means
(docs/architecture.md §3). This module runs transactional mode, and hands lease mode to
``lease.py``. A handler's 5xx or exception rolls back the claim with its own writes: nothing is
kept and the retry processes afresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime
from typing import Generic, TypeVar

from whatsorder_idempotency.config import IdempotencyConfig
from whatsorder_idempotency.decision import Pending, Replay, decide
from whatsorder_idempotency.errors import (
    FingerprintMismatch,
    RequestInFlight,
    StoreBusy,
    StoreUnavailable,
    TransactionConflict,
    retry_after_by_default,
)
from whatsorder_idempotency.events import Listener, Watch
from whatsorder_idempotency.first_copies import Committed, FirstCopies, FirstRun, answer_of
from whatsorder_idempotency.front_reads import note_found_none, take_found_none
from whatsorder_idempotency.lease import LeasedHandler, LeaseRunner
from whatsorder_idempotency.outcomes import Outcome, Result
from whatsorder_idempotency.record import (
    HandlerResult,
    IdempotencyRecord,
    IdempotentRequest,
    StoredResponse,
    utcnow,
)
from whatsorder_idempotency.stores.base import (
    Claimed,
    LeaseStore,
    StoreTransaction,
    TransactionalStore,
)

__all__ = ["IdempotencyEngine", "Outcome", "Result"]

ContextT = TypeVar("ContextT")
log = logging.getLogger("whatsorder_idempotency")
Handler = Callable[[ContextT], Awaitable[HandlerResult]]
# ``read_then_transaction(scope, key, read=…)`` of a store that has it (SqlStore).
ReadFirst = Callable[
    ..., AbstractAsyncContextManager[IdempotencyRecord | StoreTransaction[ContextT]]
]

# Races lost in a row before giving up (each loss means another request just changed the record).
MAX_CLAIM_ATTEMPTS = 3
# Runs of one transaction that lost a race (deadlock, serialization, a unique key taken
# meanwhile): each loss rolled everything back, so running again is safe; the last loss is a 503.
MAX_TRANSACTION_RUNS = 4


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
        self._transactional: TransactionalStore[ContextT] | None = (
            store if isinstance(store, TransactionalStore) else None
        )
        self._leases = (
            LeaseRunner(store, self.config, clock) if isinstance(store, LeaseStore) else None
        )
        # A transactional store that can read the committed record first, on the connection
        # its transaction then uses (SqlStore), answers a replay with that one read: no BEGIN,
        # no lock_timeout, no claim INSERT, and on SQLite no wait for the write lock.
        # Copies of a key arriving in this process while one of them runs wait for it here.
        self._first_copies = FirstCopies()
        self._read_first: ReadFirst[ContextT] | None = (
            getattr(store, "read_then_transaction", None)
            if self._transactional is not None
            else None
        )

    async def execute(self, request: IdempotentRequest, handler: Handler[ContextT]) -> Result:
        """Claim the key, run ``handler`` in the claim's transaction, store and return its answer.

        Raises ``FingerprintMismatch``, ``RequestInFlight``, ``StoreBusy`` or
        ``StoreUnavailable``; exceptions of the handler propagate after the rollback.
        """
        store = self._transactional
        if store is None:
            raise TypeError(f"{type(self.store).__name__} has no transactions: use execute_leased")
        read = not take_found_none(self.store, request)  # a replay front read it just now
        with Watch(self.listeners, request) as watch, self._retry_after():
            running = self._first_copies.running(request)
            if running is not None:  # another copy of the key runs here: its answer, if it fits
                # As long as the store would have it wait on the first copy's claim.
                wait = getattr(store, "in_flight_wait", self.config.in_flight_wait)
                answer = await answer_of(running, request, wait.total_seconds())
                if answer is not None:
                    watch.looked_up()
                    return watch.done(Result(answer, Outcome.REPLAYED))
                return watch.done(
                    await self._execute_runs(store, request, handler, watch, None, read)
                )
            with self._first_copies.first(request) as first:
                try:
                    result = await self._execute_runs(store, request, handler, watch, first, read)
                except (RequestInFlight, StoreBusy, StoreUnavailable) as refused:
                    first.refused = refused  # the copies waiting are told the same
                    raise
                first.committed = first.stored  # committed: the copies waiting may replay it
                return watch.done(result)

    async def _execute_runs(
        self,
        store: TransactionalStore[ContextT],
        request: IdempotentRequest,
        handler: Handler[ContextT],
        watch: Watch,
        first: FirstRun | None,
        read: bool,
    ) -> Result:
        """``_execute``, run again (up to ``MAX_TRANSACTION_RUNS``) after a lost race."""
        for run in range(1, MAX_TRANSACTION_RUNS + 1):
            try:
                return await self._execute(store, request, handler, watch, first, read)
            except TransactionConflict as conflict:
                if run == MAX_TRANSACTION_RUNS:
                    # Lost every run: worth a look (a unique key a bug takes every time
                    # ends here too), though the caller answers 503 and the retry is safe.
                    log.warning(
                        "transaction lost every run",
                        extra={"reason": str(conflict), "runs": run},
                    )
                    raise
                log.info("transaction rerun", extra={"reason": str(conflict), "run": run})
                # Jittered, so two transactions that deadlocked do not meet again at once.
                await asyncio.sleep(random.uniform(0.002, 0.010) * run)
        raise AssertionError("unreachable")  # the last run returned or raised

    async def execute_leased(self, request: IdempotentRequest, handler: LeasedHandler) -> Result:
        """Lease mode: claim, run ``handler`` while renewing the lease, then store its answer.

        A duplicate in flight is waited for (``in_flight_wait``) and then replayed, or gets
        ``RequestInFlight``. A handler that raises or answers 5xx releases its claim.
        """
        if self._leases is None:
            raise TypeError(f"{type(self.store).__name__} is not a lease store: use execute")
        with Watch(self.listeners, request) as watch, self._retry_after():
            return watch.done(await self._leases.run(request, handler, watch))

    async def replay_of(self, request: IdempotentRequest) -> Result | None:
        """The stored answer if ``request`` repeats a completed one, from one read; else None.

        For a front that answers replays before the app runs (``replay_front.py``). Anything
        but a replay is left to ``execute``: a key in flight or expired, a fingerprint that
        differs. A key with no record is noted, so that this task's ``execute`` of it claims
        without reading it again (``front_reads.py``). Store errors propagate.
        """
        get = getattr(self.store, "get", None)  # every store of this package has it
        if get is None:
            raise TypeError(f"{type(self.store).__name__} cannot read a record by its key")
        watch = Watch(self.listeners, request)  # reports a replay only: the rest goes on
        record: IdempotencyRecord | None = await get(request.scope, request.key)
        if record is None:
            note_found_none(self.store, request)
            return None
        try:
            decision = decide(record, request, self._clock())
        except FingerprintMismatch:
            return None
        if not isinstance(decision, Replay):
            return None
        with watch:
            watch.looked_up()
            return watch.done(Result(decision.response, Outcome.REPLAYED))

    def _retry_after(self) -> AbstractContextManager[None]:
        return retry_after_by_default(self.config.retry_after_seconds)

    async def _execute(
        self,
        store: TransactionalStore[ContextT],
        request: IdempotentRequest,
        handler: Handler[ContextT],
        watch: Watch,
        first: FirstRun | None,
        read: bool,
    ) -> Result:
        if first is not None:
            first.stored = None  # a run before this one lost a race: it committed nothing
        try:
            if self._read_first is not None:
                # One pooled connection: a completed key is answered by one read of the
                # committed record; anything else (absent, or lease mode's claim in flight)
                # goes on to the transaction on that same connection.
                async with self._read_first(request.scope, request.key, read=read) as opened:
                    if not isinstance(opened, IdempotencyRecord):
                        return await self._run_in(opened, request, handler, watch, first)
                    decision = decide(opened, request, self._clock())
                    if isinstance(decision, Replay):
                        watch.looked_up()
                        _stored(first, request, decision.response)
                        return Result(decision.response, Outcome.REPLAYED)
                # Completed but expired: claimed afresh below, under the row lock.
            async with store.transaction() as transaction:
                return await self._run_in(transaction, request, handler, watch, first)
        except _Discard as discarded:
            return Result(discarded.response, Outcome.NOT_STORED)

    async def _run_in(
        self,
        transaction: StoreTransaction[ContextT],
        request: IdempotentRequest,
        handler: Handler[ContextT],
        watch: Watch,
        first: FirstRun | None,
    ) -> Result:
        claim = await self._claim_in(transaction, request)
        watch.looked_up()
        if isinstance(claim, Replay):
            _stored(first, request, claim.response)
            return Result(claim.response, Outcome.REPLAYED)
        result = await handler(transaction.context)
        kept = self.config.kept(result)
        if kept is None:
            raise _Discard(result.response)
        completed = await transaction.complete(
            request, claim.epoch, kept, result.annotations, self._clock(), self.config.ttl
        )
        if not completed:  # only a lease-mode take-over can fence us out here
            raise _Discard(result.response)
        # Committed with the transaction, when the caller's block ends (``execute`` hands it on).
        _stored(first, request, kept)
        return Result(result.response, Outcome.TAKEOVER if claim.takeover else Outcome.NEW)

    async def _claim_in(
        self, transaction: StoreTransaction[ContextT], request: IdempotentRequest
    ) -> Claimed | Replay:
        for _ in range(MAX_CLAIM_ATTEMPTS):
            now = self._clock()
            if await transaction.insert_claim(request, now, self.config.lease):
                return Claimed(epoch=1, takeover=False)
            record = await transaction.load(request.scope, request.key)
            if record is None:
                continue  # removed between our insert and our read (cleanup): insert again
            decision = decide(record, request, now)
            if isinstance(decision, Replay):
                return decision
            if decision is Pending.IN_FLIGHT:
                raise RequestInFlight(
                    "Another request with this idempotency key is still being processed."
                )
            epoch = await transaction.take_over(record, request, now, self.config.lease)
            if epoch is not None:
                return Claimed(epoch=epoch, takeover=True)
        raise StoreBusy("The idempotency key is heavily contended; retry.")


def _stored(first: FirstRun | None, request: IdempotentRequest, response: StoredResponse) -> None:
    """Note the answer the first copy's run stores (its copies replay it once committed)."""
    if first is not None:
        first.stored = Committed(request.fingerprint, response)
