"""Transactional mode: copies of a key in one process wait for the first copy, not the database.

A storm's copies land on a process together. In transactional mode each would take a pooled
connection, read the key (absent: the first copy's claim is not committed yet), begin a
transaction and wait on the first copy's row lock, or wait for a connection while others do.
Here a copy that arrives while another copy of its key runs in this process waits for that one
to end, holding nothing, bounded by ``in_flight_wait`` as the database's wait is:

- the first copy committed an answer and the copy is the same request (same fingerprint): the
  copy replays that answer, as the database would have it do, without a read of its own;
- the first copy was told the key is still in flight elsewhere, or the store is busy or
  unavailable: so is the copy, with the same error (each copy trying the database again in
  turn, each waiting out the same lock or pool, would answer late, past a provider's patience);
- anything else (its handler failed, it stored nothing, it was another request): the copy runs
  as if it had arrived alone, and the database decides (a mismatch, a take-over, a claim).

Only answers committed while copies waited are handed on, then forgotten: nothing is cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from whatsorder_idempotency.errors import RequestInFlight, StoreBusy, StoreUnavailable
from whatsorder_idempotency.record import IdempotentRequest, StoredResponse

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Committed:
    """What the first copy's transaction committed: the answer stored for its fingerprint."""

    fingerprint: str
    response: StoredResponse


class FirstRun:
    """The first copy's run: ``committed`` once its answer is stored (committed, not before)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stored: Committed | None = None  # what its transaction will commit, if it does
        self.committed: Committed | None = None
        self.refused: RequestInFlight | StoreBusy | StoreUnavailable | None = None
        self.ended = asyncio.Event()


class FirstCopies:
    """The copies running in this process, one per key."""

    def __init__(self) -> None:
        self._running: dict[Key, FirstRun] = {}

    def running(self, request: IdempotentRequest) -> FirstRun | None:
        """The run of another copy of this key in this process (on this event loop), if any."""
        run = self._running.get((request.scope, request.key))
        if run is None or run.loop is not asyncio.get_running_loop():
            return None
        return run

    @contextmanager
    def first(self, request: IdempotentRequest) -> Iterator[FirstRun]:
        """This copy runs first: copies arriving meanwhile wait for the end of the block."""
        key = (request.scope, request.key)
        run = self._running[key] = FirstRun()
        try:
            yield run
        finally:
            if self._running.get(key) is run:
                del self._running[key]
            run.ended.set()


async def answer_of(
    run: FirstRun, request: IdempotentRequest, patience: float
) -> StoredResponse | None:
    """The answer to replay for ``request`` once ``run`` ends; None: run it as if alone.

    Raises ``RequestInFlight`` if the first copy is still running after ``patience`` seconds,
    as a duplicate waiting on its claim in the database would be told.
    """
    try:
        await asyncio.wait_for(run.ended.wait(), patience)
    except TimeoutError:
        raise RequestInFlight(
            "Another request with this idempotency key is still being processed."
        ) from None
    if run.refused is not None:
        raise run.refused
    committed = run.committed
    if committed is None or committed.fingerprint != request.fingerprint:
        return None
    return committed.response
