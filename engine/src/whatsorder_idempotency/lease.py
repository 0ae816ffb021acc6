"""Lease mode: the claim is a lease with a fencing epoch, renewed while the handler runs.

For a store apart from the application's data (Redis, or a SQL table of its own). Copies of a
key arriving together in one process share one claim (``shared_claims.py``); duplicates in
flight are waited for, a process's copies sharing one look at the store (``Waits``), woken by
holders in other processes where the store announces completions (``wakeups.py``); completion
and release are compare-and-set on the epoch, so a holder that was taken over is fenced out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

from whatsorder_idempotency.config import IdempotencyConfig
from whatsorder_idempotency.decision import Replay, decide
from whatsorder_idempotency.errors import IdempotencyError, RequestInFlight
from whatsorder_idempotency.events import Watch
from whatsorder_idempotency.held import HeldKey, held_key
from whatsorder_idempotency.outcomes import Outcome, Result
from whatsorder_idempotency.record import (
    HandlerResult,
    IdempotentRequest,
    Status,
    StoredResponse,
)
from whatsorder_idempotency.shared_claims import HeldHere, SharedClaims
from whatsorder_idempotency.stores.base import Claimed, LeaseStore
from whatsorder_idempotency.waits import Waits
from whatsorder_idempotency.wakeups import wakeups_of

log = logging.getLogger("whatsorder_idempotency")
LeasedHandler = Callable[[], Awaitable[HandlerResult]]


class LeaseRunner:
    """Claims a key as a lease, runs the handler under a heartbeat, then completes or releases."""

    def __init__(
        self, store: LeaseStore, config: IdempotencyConfig, clock: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        # Holders in other processes wake this one's waits where the store announces them.
        self._waits = Waits(config, clock, wakeups_of(store))
        self._shared = SharedClaims()

    async def run(self, request: IdempotentRequest, handler: LeasedHandler, watch: Watch) -> Result:
        claim = await self._claim(request)
        watch.looked_up()
        if isinstance(claim, Replay):
            return Result(claim.response, Outcome.REPLAYED)
        try:
            with self._shared.holding(request):
                return await self._hold(request, handler, claim)
        finally:
            # Duplicates waiting in this process look at once instead of at their next poll.
            self._waits.wake(request.scope, request.key)

    async def _claim(self, request: IdempotentRequest) -> Claimed | Replay:
        deadline = time.monotonic() + self._config.in_flight_wait.total_seconds()
        while True:
            now = self._clock()
            claim = partial(self._store.claim, request, now, self._config.lease, self._config.ttl)
            found = await self._shared.claim(request, claim)
            if isinstance(found, Claimed):
                return found
            if not isinstance(found, HeldHere):
                decision = decide(found, request, now)
                if isinstance(decision, Replay):
                    return decision
            # In flight (a dead lease or an expired record would have been taken over).
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestInFlight(
                    "Another request with this idempotency key is still being processed."
                )
            changed = await self._waits.until_changed(self._store, request, remaining)
            if changed is not None and changed.status is Status.COMPLETED:
                decision = decide(changed, request, self._clock())
                if isinstance(decision, Replay):
                    return decision
            # Released, taken over, gone, or still in flight: claim (or look) again.

    async def _hold(
        self, request: IdempotentRequest, handler: LeasedHandler, claim: Claimed
    ) -> Result:
        store = self._store
        held = HeldKey(store, request, claim.epoch)
        token = held_key.set(held)
        try:
            beat = Heartbeat(store, request, claim.epoch, self._config.lease, self._clock)
            async with beat.pausing_while(lambda: held.excludes_other_writers):
                result = await handler()
        except BaseException:
            await held.roll_back()
            await _settle(store.release(request.scope, request.key, claim.epoch))
            raise
        finally:
            held.handler_done = True
            held_key.reset(token)
        kept = self._config.kept(result)
        if kept is None:
            await held.roll_back()
            await _settle(store.release(request.scope, request.key, claim.epoch))
            return Result(result.response, Outcome.NOT_STORED)
        if held.shared is not None:
            return await self._commit_shared(held, result, kept, claim)
        now = self._clock()
        completed = await _settle(store.complete(request, claim.epoch, kept, now, self._config.ttl))
        if completed is None:
            return Result(result.response, Outcome.NOT_STORED)
        if not completed:
            # Our lease was taken over while we ran: the new holder's result stands.
            log.warning("lease lost before completion; the response was not stored")
            return Result(result.response, Outcome.LEASE_LOST)
        return Result(result.response, Outcome.TAKEOVER if claim.takeover else Outcome.NEW)

    async def _commit_shared(
        self, held: HeldKey, result: HandlerResult, kept: StoredResponse, claim: Claimed
    ) -> Result:
        """Commit the handler's writes with its answer: both, or (fenced out) neither."""
        request = held.request
        commit = held.commit_with(kept, self._clock(), self._config.ttl)
        try:
            # Shielded: a request cancelled now must not leave the outcome half-decided.
            completed = await asyncio.shield(asyncio.ensure_future(commit))
        except BaseException:
            # The commit's fate is unknown: no answer may go out. Releasing is safe either way
            # (a completed record is no longer held), and lets the retry go on at once.
            await _settle(self._store.release(request.scope, request.key, claim.epoch))
            raise
        if not completed:
            log.warning("lease lost before completion; the handler's writes were rolled back")
            # The answer describes writes that no longer exist; the successor's is the one.
            raise RequestInFlight(
                "This request was taken over by a retry while it ran and its writes were "
                "undone; retry to get the answer of the request that took over."
            )
        return Result(result.response, Outcome.TAKEOVER if claim.takeover else Outcome.NEW)


async def _settle(step: Awaitable[bool]) -> bool | None:
    """Finish a store step after the handler ran, even if the request is being cancelled.

    The handler's work is done and must not be repeated, so a store failure here is logged,
    not raised: the response still goes out (the lease expires by itself).
    """
    try:
        return await asyncio.shield(asyncio.ensure_future(step))
    except IdempotencyError as error:
        log.warning("idempotency store step failed after the handler ran: %s", error)
        return None


class Heartbeat:
    """Renews the lease ``BEATS_PER_LEASE`` times per lease length while the handler runs.

    Four beats per lease (every second of the default 4 s lease): after a renewal, the next
    three may each fail or be slow and the lease still holds until the fourth, so only a store
    that is unreachable for about a lease's length loses it. Each renewal is given
    ``RENEWAL_PATIENCE`` of the interval and then abandoned, so one that hangs (a dead
    connection nobody noticed) cannot hold up the next beat, which starts on time. A renewal
    the store refuses (a take-over fenced this holder out) ends the beat; completion, a
    compare-and-set on the epoch, then finds the lease lost.
    """

    BEATS_PER_LEASE = 4
    RENEWAL_PATIENCE = 0.75  # of the interval

    def __init__(
        self,
        store: LeaseStore,
        request: IdempotentRequest,
        epoch: int,
        lease: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._request = request
        self._epoch = epoch
        self._lease = lease
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._start: asyncio.TimerHandle | None = None
        self._paused: Callable[[], bool] = lambda: False

    def pausing_while(self, paused: Callable[[], bool]) -> Heartbeat:
        """Skip renewals while ``paused()``: the holder's own transaction keeps others out."""
        self._paused = paused
        return self

    @classmethod
    def interval(cls, lease: timedelta) -> float:
        """Seconds between the starts of two renewals."""
        return lease.total_seconds() / cls.BEATS_PER_LEASE

    async def __aenter__(self) -> Heartbeat:
        # The first beat is an interval away: most handlers are done before it, so the task
        # that beats is started only then (a timer costs a request far less than a task).
        loop = asyncio.get_running_loop()
        self._start = loop.call_later(self.interval(self._lease), self._begin_beating)
        return self

    def _begin_beating(self) -> None:
        self._task = asyncio.create_task(self._beat())

    async def __aexit__(self, *_exc: object) -> None:
        if self._start is not None:
            self._start.cancel()
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _beat(self) -> None:
        interval = self.interval(self._lease)
        patience = interval * self.RENEWAL_PATIENCE
        next_beat = time.monotonic()  # started an interval after the claim: the first is due
        while True:
            await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
            next_beat = max(next_beat, time.monotonic()) + interval  # no burst after a pause
            if self._paused():
                continue
            if await self._renew(patience) is False:
                return

    async def _renew(self, patience: float) -> bool | None:
        """One renewal: True done, False refused (fenced out), None failed or too slow."""
        until = self._clock() + self._lease
        renewal = asyncio.ensure_future(
            self._store.renew(self._request.scope, self._request.key, self._epoch, until)
        )
        try:
            done, _ = await asyncio.wait({renewal}, timeout=patience)
        except asyncio.CancelledError:  # the handler is done: so is this beat
            _abandon(renewal)
            raise
        if not done:
            _abandon(renewal)
            log.warning("lease renewal took over %.2f s; abandoned", patience)
            return None
        try:
            return renewal.result()
        except Exception as error:  # a hiccup: try again next beat while the lease lasts
            log.warning("lease renewal failed: %s", type(error).__name__)
            return None


_abandoned: set[asyncio.Future[bool]] = set()  # renewals given up on, kept until they end


def _abandon(renewal: asyncio.Future[bool]) -> None:
    """Cancel a renewal without awaiting it (unlike ``wait_for``): a store's clean-up of a
    hung call, such as giving back or closing its connection, may hang as well."""
    renewal.cancel()
    _abandoned.add(renewal)
    renewal.add_done_callback(_forget_abandoned)


def _forget_abandoned(renewal: asyncio.Future[bool]) -> None:
    _abandoned.discard(renewal)
    if not renewal.cancelled():
        renewal.exception()  # retrieved: an abandoned renewal's failure is not news
