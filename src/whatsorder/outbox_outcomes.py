"""What an outbox send did, recorded (docs/architecture.md, "The outbox"): accepted (the row
marked sent: the crash window's one commit), failed (retried with backoff, or given up), or
refused for a reason of the customer's (held, and an opt-out noted in the consent ledger).

Each runs on the connection the sender took before the send, in a transaction of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder import observability
from whatsorder.db.consent import ConsentChange, ConsentRepository
from whatsorder.db.outbox import OutboxMessage, OutboxRepository
from whatsorder.db.outbox_holds import hold, recipient_of
from whatsorder.outbound.forms import Refusal, SendFailed
from whatsorder_idempotency.stores.sql import AUTOCOMMIT_OPTION

log = logging.getLogger("whatsorder.outbox")

RECORD_TRIES = 3  # commits of an accepted send tried before the row is left to its lease


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``first_delay`` doubled per attempt, at most ``max_delay``."""

    max_attempts: int = 8
    first_delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(hours=1)

    def delay(self, attempts: int) -> timedelta:
        doubled: timedelta = self.first_delay * (2 ** min(max(0, attempts - 1), 30))
        return min(doubled, self.max_delay)


async def record_sent(
    connection: AsyncConnection,
    message: OutboxMessage,
    provider_message_id: str | None,
    sent_as: str,
    now: Callable[[], datetime],
) -> None:
    """Commit the provider's acceptance, trying again (bounded) if the database fails.

    This is the crash window: one statement that commits itself (no BEGIN and COMMIT round
    trips around it). Past the last try the error propagates: the row is sent again after its
    lease, a duplicate the provider will deliver (docs/reliability.md, §8).
    """
    await connection.execution_options(**_lone_statement(connection.dialect.name))
    for attempt in range(1, RECORD_TRIES + 1):
        try:
            await OutboxRepository(connection).mark_sent(
                message, provider_message_id, now(), sent_as
            )
            await connection.commit()  # the statement committed itself; this ends ours
            return
        except Exception:
            if attempt == RECORD_TRIES:
                raise
            log.exception("Outbox send not recorded; trying again", extra=details(message))
            await asyncio.sleep(0.2 * attempt)
            with contextlib.suppress(Exception):
                await connection.invalidate()  # the next try takes a fresh connection
            with contextlib.suppress(Exception):
                await connection.rollback()  # what was begun on the old one is gone


def _lone_statement(dialect: str) -> dict[str, Any]:
    """Execution options for a statement that commits itself (SQLite: no BEGIN IMMEDIATE)."""
    if dialect == "postgresql":
        return {"isolation_level": "AUTOCOMMIT"}
    return {AUTOCOMMIT_OPTION: True}


async def record_failure(
    connection: AsyncConnection,
    message: OutboxMessage,
    failure: SendFailed,
    now: datetime,
    retry: RetryPolicy,
    provider: str,
) -> None:
    """A failed attempt: held if the provider refused for the customer's reason, else retried
    at the policy's delay or, when permanent or out of attempts, failed for good."""
    if failure.refusal is not None:
        await _record_refusal(connection, message, failure, now, provider)
        return
    final = failure.permanent or message.attempts >= retry.max_attempts
    retry_at = None if final else now + retry.delay(message.attempts)
    async with connection.begin():
        await OutboxRepository(connection).mark_failed_attempt(message, str(failure), retry_at)
    observability.record_outbox_send("failed" if final else "retry")
    log.warning("Outbox send failed", extra={**details(message, str(failure)), "final": final})


async def _record_refusal(
    connection: AsyncConnection,
    message: OutboxMessage,
    failure: SendFailed,
    now: datetime,
    provider: str,
) -> None:
    """Hold a row the provider refused for a reason of the customer's; note an opt-out once
    (keyed by the outbox key, so a second record of the same refusal adds nothing)."""
    if failure.refusal is Refusal.OPTED_OUT:
        reason = f"the provider says the customer opted out: {failure}"
    else:
        reason = f"the provider refused text outside the 24-hour window: {failure}"
    async with connection.begin():
        await hold(connection, message, reason, attempted=True)
        recipient = await recipient_of(connection, message)
        if failure.refusal is Refusal.OPTED_OUT and recipient is not None:
            await ConsentRepository(connection).record(
                recipient.retailer_id,
                ConsentChange.STOP,
                source=f"{provider}_send_error",
                source_ref=message.idempotency_key,
                occurred_at=now,
                now=now,
                detail=str(failure),
            )
    observability.record_outbox_send("held")
    log.warning("Outbox message refused and held", extra=details(message, reason))


def details(message: OutboxMessage, reason: str | None = None) -> dict[str, object]:
    """What a log line says of a row: its id, attempts and, if given, why (cut short)."""
    found: dict[str, object] = {"outbox_id": message.id, "attempts": message.attempts}
    if reason is not None:
        found["reason"] = reason[:200]
    return found
