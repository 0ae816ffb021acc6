"""The key a running handler holds, and the transaction its writes can share with the answer.

Lease mode runs every handler under a ``HeldKey`` (a context variable, so it reaches the
handler through any framework: an ASGI app, a FastAPI dependency, a job function). A handler
on a SQL store that calls ``idempotent_connection()`` gets a connection in a transaction that
commits together with the stored answer, fenced by the holder's epoch: exactly once for the
handler's own writes, even across a crash after the write (docs/idempotency.md). A handler that
never asks keeps plain lease mode and pays nothing.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from whatsorder_idempotency.record import IdempotentRequest, StoredResponse

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from whatsorder_idempotency.stores.base import LeaseStore
    from whatsorder_idempotency.stores.sql.shared import SharedTransaction

log = logging.getLogger("whatsorder_idempotency")


class NotGuarded(RuntimeError):
    """``idempotent_connection()`` was called where no key is held, or on a store without SQL."""


class HeldKey:
    """What the engine knows of the key the current handler holds, and its shared transaction."""

    def __init__(self, store: LeaseStore, request: IdempotentRequest, epoch: int) -> None:
        self.store = store
        self.request = request
        self.epoch = epoch
        self.shared: SharedTransaction | None = None
        self.handler_done = False

    @property
    def excludes_other_writers(self) -> bool:
        """True while a transaction is open that no other writer can pass (SQLite's)."""
        return self.shared is not None and self.shared.excludes_other_writers

    async def connection(self) -> AsyncConnection:
        if self.handler_done:
            # A task the handler left behind: its transaction would never be committed.
            raise NotGuarded(
                "The handler this idempotency key belongs to has already answered; a task it "
                "started cannot join its transaction."
            )
        if self.shared is None:
            begin = getattr(self.store, "share_transaction", None)
            if begin is None:
                raise NotGuarded(
                    f"The idempotency store is {self.store.kind}: a handler's writes can share "
                    "the stored answer's transaction only on a SQL store on the application's "
                    "own database (SqlStore, open_store('postgresql://…' or 'sqlite:///…'))."
                )
            self.shared = await begin()
        return self.shared.connection

    async def commit_with(self, response: StoredResponse, now: datetime, ttl: timedelta) -> bool:
        """Store ``response`` and commit the handler's writes with it; False if fenced out."""
        assert self.shared is not None
        shared, self.shared = self.shared, None
        return await shared.complete_and_commit(self.request, self.epoch, response, now, ttl)

    async def roll_back(self) -> None:
        """Undo the handler's writes, if it made any; never raises (the caller is failing)."""
        shared, self.shared = self.shared, None
        if shared is None:
            return
        try:
            await shared.roll_back()
        except Exception as error:  # the connection is gone: so is the transaction
            log.warning("rolling back a handler's transaction failed: %s", type(error).__name__)


held_key: ContextVar[HeldKey | None] = ContextVar("whatsorder_idempotency_held_key", default=None)


async def idempotent_connection() -> AsyncConnection:
    """The connection whose writes commit with this request's stored answer, exactly once.

    Call it from a handler the engine runs (a route behind ``IdempotencyMiddleware`` with a
    key, a function under ``@idempotent``); it is also a FastAPI dependency as it stands:
    ``connection: AsyncConnection = Depends(idempotent_connection)``. Don't commit it: the
    engine commits when the handler has answered (2xx–4xx) and rolls back on a 5xx or an
    exception. Raises ``NotGuarded`` outside such a handler or on a store without SQL.
    """
    held = held_key.get()
    if held is None:
        raise NotGuarded(
            "No idempotency key is held here: idempotent_connection() works inside a request "
            "that IdempotencyMiddleware guards (a POST or PATCH with an Idempotency-Key; use "
            "required=True so that a request without one is refused) or a function under "
            "@idempotent."
        )
    return await held.connection()
