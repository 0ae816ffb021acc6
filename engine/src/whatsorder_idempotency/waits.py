"""Duplicates waiting on a key in flight, in this process: one look at the store for them all.

Lease mode's claim loop (``lease.py``) asks ``Waits`` for the record once it is no longer in
flight; the holder in this process wakes the look as soon as it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime

from whatsorder_idempotency.config import IdempotencyConfig
from whatsorder_idempotency.record import IdempotencyRecord, IdempotentRequest, Status
from whatsorder_idempotency.stores.base import LeaseStore


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
