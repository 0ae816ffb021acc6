"""What the engine needs of a store: a handful of atomic steps inside one transaction.

The engine (``engine.py``) makes every decision; a store only claims, loads, takes over and
completes records. Each backend lives in a module of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from whatsorder.idempotency.record import IdempotencyRecord, IdempotentRequest, StoredResponse

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


class TransactionalStore(Protocol[ContextT]):
    """A store whose claim, the handler's writes and the completion commit as one transaction."""

    kind: str

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction[ContextT]]:
        """Begin; commit when the block ends normally, roll back when it raises."""
        ...
