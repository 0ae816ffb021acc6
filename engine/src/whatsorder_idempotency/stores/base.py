"""What the engine needs of a store: a handful of atomic steps inside one transaction.

The engine (``engine.py``) makes every decision; a store only claims, loads, takes over and
completes records. Each backend lives in a module of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar, runtime_checkable

from whatsorder_idempotency.record import IdempotencyRecord, IdempotentRequest, StoredResponse

ContextT = TypeVar("ContextT", covariant=True)


class StoreTransaction(Protocol[ContextT]):
    """One transaction of a store. ``context`` is handed to the handler for its own writes."""

    @property
    def context(self) -> ContextT: ...

    async def insert_claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta
    ) -> bool:
        """Create the record in progress if no record has the key; True when this call created it.

        Must be atomic (insert-if-absent), never a read followed by an insert.
        """
        ...

    async def load(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    async def take_over(
        self, record: IdempotencyRecord, request: IdempotentRequest, now: datetime, lease: timedelta
    ) -> int | None:
        """Claim an expired record or a dead lease; the new epoch, or None if another won."""
        ...

    async def complete(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        annotations: Mapping[str, object],
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        """Store the response for the holder of ``epoch``; False when that holder lost the claim."""
        ...


@runtime_checkable
class TransactionalStore(Protocol[ContextT]):
    """A store whose claim, the handler's writes and the completion commit as one transaction."""

    kind: str

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction[ContextT]]:
        """Begin; commit when the block ends normally, roll back when it raises."""
        ...


@dataclass(frozen=True, slots=True)
class Claimed:
    """This request holds the key: ``epoch`` fences it against later take-overs."""

    epoch: int
    takeover: bool


@runtime_checkable
class LeaseStore(Protocol):
    """A store apart from the application's data: claims are leases with fencing epochs.

    Every method is one atomic step. ``claim`` creates the record in progress when absent, or
    takes over a record whose lease died or that expired (its epoch grows); otherwise it returns
    the record as it found it, for the engine to decide on.
    """

    kind: str

    async def claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta, ttl: timedelta
    ) -> Claimed | IdempotencyRecord: ...

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    async def renew(self, scope: str, key: str, epoch: int, locked_until: datetime) -> bool:
        """Extend the holder's lease; False when ``epoch`` no longer holds the key."""
        ...

    async def complete(
        self,
        request: IdempotentRequest,
        epoch: int,
        response: StoredResponse,
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        """Store the response if ``epoch`` still holds the key (compare-and-set)."""
        ...

    async def release(self, scope: str, key: str, epoch: int) -> bool:
        """Drop the claim of ``epoch`` (its handler failed) so that a retry processes afresh."""
        ...

    async def close(self) -> None: ...
