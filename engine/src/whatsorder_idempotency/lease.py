"""Lease mode: the claim is a lease with a fencing epoch, renewed while the handler runs.

For a store apart from the application's data (Redis, or a SQL table of its own). Duplicates in
flight are waited for, a process's copies sharing one look at the store (``Waits``); completion
and release are compare-and-set on the epoch, so a holder that was taken over is fenced out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from whatsorder_idempotency.config import IdempotencyConfig
from whatsorder_idempotency.decision import Replay, decide
from whatsorder_idempotency.errors import IdempotencyError, RequestInFlight
from whatsorder_idempotency.events import Watch
from whatsorder_idempotency.outcomes import Outcome, Result
from whatsorder_idempotency.record import (
    HandlerResult,
    IdempotencyRecord,
    IdempotentRequest,
    Status,
)
from whatsorder_idempotency.stores.base import Claimed, LeaseStore

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
        self._waits = Waits(config, clock)

    async def run(self, request: IdempotentRequest, handler: LeasedHandler, watch: Watch) -> Result:
        claim = await self._claim(request)
        watch.looked_up()
        if isinstance(claim, Replay):
            return Result(claim.response, Outcome.REPLAYED)
        try:
            return await self._hold(request, handler, claim)
        finally:
            # Duplicates waiting in this process look at once instead of at their next poll.
            self._waits.wake(request.scope, request.key)

    async def _claim(self, request: IdempotentRequest) -> Claimed | Replay:
        deadline = time.monotonic() + self._config.in_flight_wait.total_seconds()
        while True:
            now = self._clock()
            found = await self._store.claim(request, now, self._config.lease, self._config.ttl)
            if isinstance(found, Claimed):
                return found
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
        try:
            async with Heartbeat(store, request, claim.epoch, self._config.lease, self._clock):
                result = await handler()
        except BaseException:
            await _settle(store.release(request.scope, request.key, claim.epoch))
            raise
        kept = self._config.kept(result)
        if kept is None:
            await _settle(store.release(request.scope, request.key, claim.epoch))
            return Result(result.response, Outcome.NOT_STORED)
        now = self._clock()
        completed = await _settle(store.complete(request, claim.epoch, kept, now, self._config.ttl))
        if completed is None:
            return Result(result.response, Outcome.NOT_STORED)
        if not completed:
            # Our lease was taken over while we ran: the new holder's result stands.
            log.warning("lease lost before completion; the response was not stored")
            return Result(result.response, Outcome.LEASE_LOST)
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


class Waits:
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

    @classmethod
    def interval(cls, lease: timedelta) -> float:
        """Seconds between the starts of two renewals."""
        return lease.total_seconds() / cls.BEATS_PER_LEASE

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _beat(self) -> None:
        interval = self.interval(self._lease)
        patience = interval * self.RENEWAL_PATIENCE
        next_beat = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
            next_beat = max(next_beat, time.monotonic()) + interval  # no burst after a pause
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
