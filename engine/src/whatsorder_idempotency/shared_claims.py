"""Copies of one key arriving together in one process: one claim at the store for them all.

A storm's copies land on every process at once. Each used to send its own claim (a read, on a
SQL store) before learning that the key is in flight, then join the process's one look at the
store (``waits.py``). Here a copy that arrives while this process already knows the key's state
skips the store:

- while another copy's claim is on its way, it takes that claim's answer: a record is decided
  for this copy's own request as if it had read it (a completed record is final, so reading it
  a moment earlier changes nothing; one in flight is waited for); ``Claimed`` means the other
  copy now holds the key, so this one is a duplicate in flight;
- while a copy in this process holds the key, it is a duplicate in flight without asking.

Nothing is kept once the claim or the hold ends: no record is cached (docs/benchmarks.md).
A claim that fails fails every copy that waited on it, with the same error (a store that is down
or slow answers them all at once, instead of each copy waiting out its own timeout in turn); if
the first copy was cancelled before its claim answered, each copy that waited claims for itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from whatsorder_idempotency.record import IdempotencyRecord, IdempotentRequest
from whatsorder_idempotency.stores.base import Claimed

Key = tuple[str, str]


class HeldHere:
    """What a copy learned from this process instead of the store: the key is in flight."""


HELD_HERE = HeldHere()


class SharedClaims:
    """The claims on their way and the keys held, in this process."""

    def __init__(self) -> None:
        self._claiming: dict[Key, asyncio.Future[Claimed | IdempotencyRecord]] = {}
        self._held: dict[Key, int] = {}

    async def claim(
        self,
        request: IdempotentRequest,
        claim: Callable[[], Awaitable[Claimed | IdempotencyRecord]],
    ) -> Claimed | IdempotencyRecord | HeldHere:
        """``claim()``'s answer for this copy: its own, or that of the copy that went first.

        ``Claimed`` only ever goes to the copy that ran ``claim()``; the others get its record,
        or ``HELD_HERE`` when it claimed the key.
        """
        key = (request.scope, request.key)
        if self._held.get(key):
            return HELD_HERE
        loop = asyncio.get_running_loop()
        going = self._claiming.get(key)
        if going is not None and going.get_loop() is loop:
            try:
                found = await asyncio.shield(going)
            except _Abandoned:
                pass  # the first copy went away before its claim answered: claim for this one
            else:
                return HELD_HERE if isinstance(found, Claimed) else found
        return await self._claim_first(key, loop, claim)

    async def _claim_first(
        self,
        key: Key,
        loop: asyncio.AbstractEventLoop,
        claim: Callable[[], Awaitable[Claimed | IdempotencyRecord]],
    ) -> Claimed | IdempotencyRecord:
        going: asyncio.Future[Claimed | IdempotencyRecord] = loop.create_future()
        self._claiming[key] = going
        try:
            found = await claim()
        except BaseException as error:
            going.set_exception(
                _Abandoned() if isinstance(error, asyncio.CancelledError) else error
            )
            going.exception()  # retrieved: each copy that waited on it has seen it
            raise
        else:
            going.set_result(found)
            return found
        finally:
            if self._claiming.get(key) is going:
                del self._claiming[key]

    @contextmanager
    def holding(self, request: IdempotentRequest) -> Iterator[None]:
        """While the handler of the copy that claimed the key runs."""
        key = (request.scope, request.key)
        self._held[key] = self._held.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]


class _Abandoned(Exception):
    """The copy that went first was cancelled before its claim answered."""
