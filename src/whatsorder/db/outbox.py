"""The outbox: replies written with the order they answer, and notifications with the
transition they announce, sent afterwards.

Rows are added inside the webhook's transaction (``enqueue``), so a reply exists exactly when
its order does. The sender claims due rows in a short transaction of its own, sends them with
no transaction open, and then records what happened.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.clock import as_utc
from whatsorder.db.dialect import upsert
from whatsorder.db.tables import outbox_messages
from whatsorder.ordering.notifications import Notification

MAX_ERROR_CHARS = 500  # outbox_messages.last_error


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    HELD = "held"  # not sent, never will be: held_reason says why (whatsorder.outbound)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A claimed reply; ``attempts`` counts this attempt too."""

    id: int
    provider: str
    recipient: str
    body: str
    idempotency_key: str
    attempts: int
    # A notification's own (migration 0008); a reply has none of them and is not proactive.
    order_id: int | None = None
    event: str | None = None
    language: str | None = None
    params: dict[str, object] | None = None
    proactive: bool = False


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """Replies not yet sent (or given up): how many, and how long the oldest has waited."""

    pending: int
    oldest_age_seconds: float  # 0 when nothing is pending


class OutboxRepository:
    """The outbox rows on one connection, inside the caller's transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def enqueue(
        self, provider: str, recipient: str, body: str, idempotency_key: str, now: datetime
    ) -> bool:
        """Add a reply unless one with this key exists; True if it was added."""
        result = await self._connection.execute(
            upsert(self._connection, outbox_messages)
            .values(
                provider=provider,
                recipient=recipient,
                body=body,
                idempotency_key=idempotency_key,
                status=OutboxStatus.PENDING.value,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        return result.rowcount == 1

    async def enqueue_notification(self, notification: Notification, now: datetime) -> bool:
        """Add a notification of an order's change unless its key exists; True if added.

        Proactive: consent and WhatsApp's 24-hour window apply to it, unlike a reply.
        """
        result = await self._connection.execute(
            upsert(self._connection, outbox_messages)
            .values(
                provider=notification.provider,
                recipient=notification.recipient,
                body=notification.body,
                idempotency_key=notification.idempotency_key,
                status=OutboxStatus.PENDING.value,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                order_id=notification.order_id,
                event=notification.event.value,
                language=notification.language,
                params=json.dumps(dict(notification.params), sort_keys=True),
                proactive=True,
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        return result.rowcount == 1

    async def claim_due(
        self, provider: str, now: datetime, limit: int, lease: timedelta
    ) -> list[OutboxMessage]:
        """Take up to ``limit`` due replies for this sender, oldest first.

        Each claimed row counts an attempt and is hidden for ``lease``: a sender that dies
        mid-send leaves it to be claimed again after that, and sent with the same key. On
        PostgreSQL concurrent senders skip each other's locked rows; SQLite has one writer.
        """
        table = outbox_messages
        is_due = (
            table.c.provider == provider,
            table.c.status == OutboxStatus.PENDING.value,
            table.c.next_attempt_at <= now,
        )
        due = (
            await self._connection.scalars(
                select(table.c.id)
                .where(*is_due)
                .order_by(table.c.next_attempt_at, table.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not due:
            return []
        # The rows are ours until commit (locked, or SQLite's single writer); the condition is
        # checked again all the same, so a claim is a compare-and-set on any transaction mode.
        rows = await self._connection.execute(
            update(table)
            .where(table.c.id.in_(due), *is_due)
            .values(attempts=table.c.attempts + 1, next_attempt_at=now + lease)
            .returning(
                table.c.id,
                table.c.recipient,
                table.c.body,
                table.c.idempotency_key,
                table.c.attempts,
                table.c.order_id,
                table.c.event,
                table.c.language,
                table.c.params,
                table.c.proactive,
            )
        )
        claimed = {
            row.id: OutboxMessage(
                row.id,
                provider,
                row.recipient,
                row.body,
                row.idempotency_key,
                row.attempts,
                row.order_id,
                row.event,
                row.language,
                _params(row.params),
                bool(row.proactive),
            )
            for row in rows
        }
        return [claimed[row_id] for row_id in due if row_id in claimed]

    async def backlog(self, provider: str, now: datetime) -> OutboxBacklog:
        """The pending replies of ``provider`` at ``now``, whether due or waiting for a retry.

        One aggregate over the pending rows (the ``status`` index finds them; sent and failed
        rows, the bulk of the table, are never read). An age below zero, a row written by a
        replica whose clock runs ahead, counts as zero.
        """
        table = outbox_messages
        row = (
            await self._connection.execute(
                select(func.count(), func.min(table.c.created_at)).where(
                    table.c.provider == provider, table.c.status == OutboxStatus.PENDING.value
                )
            )
        ).one()
        pending, oldest = int(row[0]), row[1]
        if oldest is None:
            return OutboxBacklog(pending, 0.0)
        return OutboxBacklog(pending, max(0.0, (now - as_utc(oldest)).total_seconds()))

    async def mark_sent(
        self,
        message: OutboxMessage,
        provider_message_id: str | None,
        now: datetime,
        sent_as: str | None = None,
    ) -> bool:
        """Record that the provider accepted the reply; True if this made the row sent.

        Every acceptance counts in ``sends``, even of a row already sent: a second one is a
        reply sent twice, and the audit must see it. The row keeps its first message id and
        time. Acceptance is a fact whichever attempt it answers, so this is not fenced by the
        attempt: a reply accepted after another attempt gave up is sent, not failed.
        """
        table = outbox_messages
        first = table.c.status != OutboxStatus.SENT.value
        result = await self._connection.execute(
            update(table)
            .where(table.c.id == message.id)
            .values(
                sends=table.c.sends + 1,
                status=OutboxStatus.SENT.value,
                provider_message_id=case(
                    (first, provider_message_id), else_=table.c.provider_message_id
                ),
                sent_at=case((first, now), else_=table.c.sent_at),
                last_error=case((first, None), else_=table.c.last_error),
                sent_as=case((first, sent_as), else_=table.c.sent_as),
            )
            .returning(table.c.sends)
        )
        return bool(result.scalar_one_or_none() == 1)

    async def mark_failed_attempt(
        self, message: OutboxMessage, error: str, retry_at: datetime | None
    ) -> bool:
        """Record a failed attempt: retried at ``retry_at``, or ``failed`` for good if None.

        Only the attempt that holds the row may: a stale sender (its lease passed and another
        claimed the row) changes nothing.
        """
        table = outbox_messages
        values: dict[str, object] = {"last_error": error[:MAX_ERROR_CHARS]}
        if retry_at is None:
            values["status"] = OutboxStatus.FAILED.value
        else:
            values["next_attempt_at"] = retry_at
        result = await self._connection.execute(
            update(table)
            .where(
                table.c.id == message.id,
                table.c.status == OutboxStatus.PENDING.value,
                table.c.attempts == message.attempts,
            )
            .values(**values)
        )
        return result.rowcount == 1


async def replies_sent_twice(connection: AsyncConnection) -> list[str]:
    """One line per reply the provider accepted more than once: each is a duplicate message."""
    table = outbox_messages
    rows = await connection.execute(
        select(table.c.idempotency_key, table.c.sends).where(table.c.sends > 1).order_by(table.c.id)
    )
    return [f"outbox reply {row.idempotency_key!r} was accepted {row.sends} times" for row in rows]


def _params(stored: str | None) -> dict[str, object] | None:
    """A notification's ``params`` (JSON text); None for a reply or anything but an object."""
    if stored is None:
        return None
    try:
        found = json.loads(stored)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None
