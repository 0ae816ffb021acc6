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

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from whatsorder.idempotency.config import IdempotencyConfig
from whatsorder.idempotency.errors import FingerprintMismatch, RequestInFlight, StoreBusy
from whatsorder.idempotency.record import (
    HandlerResult,
    IdempotentRequest,
    Status,
    StoredResponse,
    utcnow,
)
from whatsorder.idempotency.stores.base import StoreTransaction, TransactionalStore

ContextT = TypeVar("ContextT")
Handler = Callable[[ContextT], Awaitable[HandlerResult]]

# Races lost in a row before giving up (each loss means another request just changed the record).
MAX_CLAIM_ATTEMPTS = 3


class Outcome(enum.StrEnum):
    NEW = "new"
    TAKEOVER = "takeover"
    REPLAYED = "replayed"
    NOT_STORED = "not_stored"


@dataclass(frozen=True, slots=True)
class Result:
    """The response to send, and how it came about."""

    response: StoredResponse
    outcome: Outcome

    @property
    def replayed(self) -> bool:
        return self.outcome is Outcome.REPLAYED


@dataclass(frozen=True, slots=True)
class _Claimed:
    epoch: int
    takeover: bool


class _Discard(Exception):
    """Raised inside the transaction so it rolls back; carries the response to send anyway."""

    def __init__(self, response: StoredResponse) -> None:
        super().__init__("response not stored")
        self.response = response


class IdempotencyEngine(Generic[ContextT]):
    """Runs a handler at most once per (scope, key) and replays its response afterwards."""

    def __init__(
        self,
        store: TransactionalStore[ContextT],
        config: IdempotencyConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.config = config or IdempotencyConfig()
        self._clock = clock

    async def execute(self, request: IdempotentRequest, handler: Handler[ContextT]) -> Result:
        """Claim the key, run ``handler`` in the claim's transaction, store and return its answer.

        Raises ``FingerprintMismatch``, ``RequestInFlight``, ``StoreBusy`` or
        ``StoreUnavailable``; exceptions of the handler propagate after the rollback.
        """
        try:
            async with self.store.transaction() as transaction:
                claim = await self._claim(transaction, request)
                if isinstance(claim, StoredResponse):
                    return Result(claim, Outcome.REPLAYED)
                result = await handler(transaction.context)
                response = result.response
                if not self.config.stores_status(response.status):
                    raise _Discard(response)
                completed = await transaction.complete(
                    request,
                    claim.epoch,
                    response,
                    result.annotations,
                    self._clock(),
                    self.config.ttl,
                )
                if not completed:  # only a lease-mode take-over can fence us out here
                    raise _Discard(response)
                return Result(response, Outcome.TAKEOVER if claim.takeover else Outcome.NEW)
        except _Discard as discarded:
            return Result(discarded.response, Outcome.NOT_STORED)

    async def _claim(
        self, transaction: StoreTransaction[ContextT], request: IdempotentRequest
    ) -> _Claimed | StoredResponse:
        for _ in range(MAX_CLAIM_ATTEMPTS):
            now = self._clock()
            if await transaction.insert_claim(request, now, self.config.lease):
                return _Claimed(epoch=1, takeover=False)
            record = await transaction.load(request.scope, request.key)
            if record is None:
                continue  # removed between our insert and our read (cleanup): insert again
            if record.status is Status.COMPLETED and not record.is_expired(now):
                if record.fingerprint != request.fingerprint:
                    raise FingerprintMismatch(
                        "This idempotency key was already used with a different request."
                    )
                assert record.response is not None
                return record.response
            if record.status is Status.IN_PROGRESS and record.lease_is_live(now):
                raise RequestInFlight(
                    "Another request with this idempotency key is still being processed.",
                    retry_after=self.config.retry_after_seconds,
                )
            epoch = await transaction.take_over(record, request, now, self.config.lease)
            if epoch is not None:
                return _Claimed(epoch=epoch, takeover=True)
        raise StoreBusy("The idempotency key is heavily contended; retry.", retry_after=1)
