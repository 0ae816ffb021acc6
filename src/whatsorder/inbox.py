"""The inbox: every inbound webhook delivery and what became of it, for the operator console.

An engine listener notes each delivery the engine decided (new, replayed, taken over, in flight,
mismatch, …) and the web layer notes each refusal before it (a bad signature, a body too large,
…). Notes wait in this worker's memory and a background task writes them every second in one
multi-row INSERT, so a replay's one round trip to the store stays one. A crash loses at most
the last second of notes, and a flood beyond ``MAX_PENDING`` drops the oldest (counted): these
are the operators' view, never a decision. The console says how fresh they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.clock import utcnow
from whatsorder.db.tables import inbound_deliveries
from whatsorder_idempotency import IdempotencyEvent

log = logging.getLogger("whatsorder.inbox")
MAX_PENDING = 100_000
FLUSH_SECONDS = 1.0
MAX_KEY = 255


class DeliveryLog:
    """An engine listener, and the web layer's note of refusals; ``run`` writes them."""

    def __init__(self) -> None:
        self._pending: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING)
        self.dropped = 0
        self.last_flush: datetime | None = None

    def __call__(self, event: IdempotencyEvent) -> None:
        self._note(event.scope, event.key or None, str(event.outcome), None, None)

    def refused(self, webhook_type: str, status: int, kind: str) -> None:
        self._note(webhook_type, None, "refused", status, kind)

    def _note(
        self,
        webhook_type: str,
        key: str | None,
        outcome: str,
        status: int | None,
        detail: str | None,
    ) -> None:
        if len(self._pending) == MAX_PENDING:
            self.dropped += 1
        self._pending.append(
            {
                "webhook_type": webhook_type[:64],
                "idempotency_key": None if key is None else key[:MAX_KEY],
                "outcome": outcome[:24],
                "http_status": status,
                "detail": None if detail is None else detail[:200],
                "received_at": utcnow(),
            }
        )

    async def flush(self, database: AsyncEngine) -> int:
        """Write what is pending in one statement; kept for the next flush if it fails."""
        rows = list(self._pending)
        if not rows:
            self.last_flush = utcnow()
            return 0
        self._pending.clear()
        try:
            async with database.begin() as connection:
                await connection.execute(insert(inbound_deliveries), rows)
        except Exception:
            self._pending.extendleft(reversed(rows))
            raise
        self.last_flush = utcnow()
        return len(rows)

    async def run(self, database: AsyncEngine, stop: asyncio.Event) -> None:
        """Flush every second until ``stop`` is set, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_SECONDS)
            try:
                await self.flush(database)
            except Exception as error:  # the database may be briefly away; notes are kept
                log.warning("inbox flush failed: %s", type(error).__name__)
