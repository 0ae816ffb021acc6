"""Duplicates waiting on a key in flight, in this process: one look at the store for them all.

Lease mode's claim loop (``lease.py``) asks ``Waits`` for the record once it is no longer in
flight. The holder in this process wakes the look as soon as it finishes; a holder in another
process does through the store's wake-ups (``wakeups.py``), where the store has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime

from whatsorder_idempotency.config import IdempotencyConfig
from whatsorder_idempotency.record import IdempotencyRecord, IdempotentRequest, Status, as_utc
from whatsorder_idempotency.stores.base import LeaseStore
from whatsorder_idempotency.wakeups import Wakeups


class Waits:
    """Duplicates of keys in flight, in this process: one look at the store per key for all.

    A storm's copies that land on one process would each poll the store; here one task per key
    polls (every 5 ms at first, then up to every 50 ms, cheap because it is one), and all the
    copies await it. When this process's own holder finishes, the look happens at once; so it
    does when the store's wake-ups announce the key, and while they are sure to (their listener
    is up and watches the key) polling is only the safety net, backing off to 250 ms. A pause
    never outlasts the holder's lease: a dead holder is taken over as soon as it can be.
    """

    FIRST_PAUSE = 0.005
    LONGEST_PAUSE = 0.05  # while polling is all that tells
    LONGEST_PAUSE_HEARD = 0.25  # while the store's wake-ups are sure to tell

    def __init__(
        self,
        config: IdempotencyConfig,
        clock: Callable[[], datetime],
        wakeups: Wakeups | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._announced = wakeups
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
        watching = None if self._announced is None else self._announced.watch(*key, wakeup.set)
        until = time.monotonic() + self._config.in_flight_wait.total_seconds()
        pause = self.FIRST_PAUSE
        try:
            while (left := until - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(pause, left))
                wakeup.clear()
                # Asked before the read: a change after the read is then sure to be announced.
                heard = watching is not None and watching.heard()
                record = await store.get(*key)
                if record is None or record.status is Status.COMPLETED:
                    return record
                now = self._clock()
                if record.can_be_taken_over(now):
                    return record
                longest = self.LONGEST_PAUSE_HEARD if heard else self.LONGEST_PAUSE
                pause = min(pause * 2, longest, _until_lease_ends(record, now))
            return None
        finally:
            if watching is not None:
                watching.close()
            if self._wakeups.get(key) is wakeup:
                del self._wakeups[key]

    def _forget(self, key: tuple[str, str], done: asyncio.Future[IdempotencyRecord | None]) -> None:
        if self._looks.get(key) is done:
            del self._looks[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter gets it from its own await


def _until_lease_ends(record: IdempotencyRecord, now: datetime) -> float:
    """Seconds until the holder's lease ends, if it is not renewed (a little past it)."""
    if record.locked_until is None:
        return 0.0
    return max(0.0, (as_utc(record.locked_until) - as_utc(now)).total_seconds()) + 0.001
