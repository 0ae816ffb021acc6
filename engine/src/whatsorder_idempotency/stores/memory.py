"""The in-memory lease store: one process, no persistence; for tests and single-worker apps.

It decides exactly as the SQL and Redis stores do, on the caller's ``now``. Like Redis, it also
forgets records on its own (on the process's monotonic clock): an in-progress record ``lease +
ttl`` after its lease was last set, a completed one ``ttl`` after completion. Forgotten records
are dropped lazily, on the next access, so memory stays bounded without a background task.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from whatsorder_idempotency.record import (
    IdempotencyRecord,
    IdempotentRequest,
    Status,
    StoredResponse,
    as_utc,
)
from whatsorder_idempotency.stores.base import Claimed

Slot = tuple[str, str]  # (scope, key)


@dataclass(slots=True)
class _Entry:
    record: IdempotencyRecord
    forget_at: float  # time.monotonic() deadline, the analogue of a Redis key's expiry


class MemoryStore:
    """Idempotency records in a dict; every step is atomic under one ``asyncio.Lock``."""

    kind = "memory"

    def __init__(self) -> None:
        self._entries: dict[Slot, _Entry] = {}
        self._deadlines: list[tuple[float, Slot]] = []  # a heap; stale items are skipped
        self._lock = asyncio.Lock()

    async def claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta, ttl: timedelta
    ) -> Claimed | IdempotencyRecord:
        slot = (request.scope, request.key)
        async with self._lock:
            self._forget_gone()
            entry = self._entries.get(slot)
            if entry is not None and not entry.record.can_be_taken_over(now):
                return entry.record
            epoch = 1 if entry is None else entry.record.epoch + 1
            record = IdempotencyRecord(
                scope=request.scope,
                key=request.key,
                fingerprint=request.fingerprint,
                status=Status.IN_PROGRESS,
                epoch=epoch,
                locked_until=now + lease,
                expires_at=None,
                response=None,
            )
            self._put(slot, record, forget_after=lease + ttl)
            return Claimed(epoch=epoch, takeover=entry is not None)

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        async with self._lock:
            self._forget_gone()
            entry = self._entries.get((scope, key))
            return None if entry is None else entry.record

    async def renew(self, scope: str, key: str, epoch: int, locked_until: datetime) -> bool:
        slot = (scope, key)
        async with self._lock:
            self._forget_gone()
            entry = self._holder_entry(slot, epoch)
            if entry is None:
                return False
            previous = entry.record.locked_until
            assert previous is not None  # in progress
            moved = (as_utc(locked_until) - as_utc(previous)).total_seconds()
            if moved <= 0:  # landed after a later renewal (the heartbeat gave up on it)
                return True
            entry.record = replace(entry.record, locked_until=locked_until)
            # The record outlives its lease by ttl: move that moment as far as the lease moved.
            entry.forget_at += moved
            heapq.heappush(self._deadlines, (entry.forget_at, slot))
            return True

    async def complete(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        slot = (request.scope, request.key)
        async with self._lock:
            self._forget_gone()
            entry = self._holder_entry(slot, epoch)
            if entry is None:
                return False
            record = replace(
                entry.record,
                status=Status.COMPLETED,
                locked_until=None,
                expires_at=now + ttl,
                response=response,
            )
            self._put(slot, record, forget_after=ttl)
            return True

    async def release(self, scope: str, key: str, epoch: int) -> bool:
        slot = (scope, key)
        async with self._lock:
            self._forget_gone()
            entry = self._holder_entry(slot, epoch)
            if entry is None:
                return False
            # The lease ends now; the record stays so the next claim's epoch is higher.
            entry.record = replace(entry.record, locked_until=None)
            return True

    async def close(self) -> None:
        async with self._lock:
            self._entries.clear()
            self._deadlines.clear()

    def _holder_entry(self, slot: Slot, epoch: int) -> _Entry | None:
        """The entry if ``epoch`` still holds it in progress (compare-and-set), else None."""
        entry = self._entries.get(slot)
        if entry is None or entry.record.status is not Status.IN_PROGRESS:
            return None
        if entry.record.locked_until is None:  # released
            return None
        return entry if entry.record.epoch == epoch else None

    def _put(self, slot: Slot, record: IdempotencyRecord, *, forget_after: timedelta) -> None:
        forget_at = time.monotonic() + forget_after.total_seconds()
        self._entries[slot] = _Entry(record, forget_at)
        heapq.heappush(self._deadlines, (forget_at, slot))

    def _forget_gone(self) -> None:
        moment = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= moment:
            _, slot = heapq.heappop(self._deadlines)
            entry = self._entries.get(slot)
            if entry is not None and entry.forget_at <= moment:
                del self._entries[slot]
