"""What the outbox sender reads and writes around a send besides the row itself: the
customer a row goes to (consent and the 24-hour window) and the hold of a row not to send.

A notification names its order, whose retailer is the customer; a reply names only its
recipient, the retailer's WhatsApp identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.clock import as_utc
from whatsorder.db.outbox import MAX_ERROR_CHARS, OutboxMessage, OutboxStatus
from whatsorder.db.tables import orders, outbox_messages, retailers
from whatsorder.outbound.decision import Customer

MAX_REASON_CHARS = 500  # outbox_messages.held_reason


@dataclass(frozen=True, slots=True)
class Recipient:
    """The retailer a row goes to, and what the send-time decision reads of them."""

    retailer_id: int
    customer: Customer


async def recipient_of(connection: AsyncConnection, message: OutboxMessage) -> Recipient | None:
    """The retailer ``message`` goes to: its order's, else the one with its recipient's id."""
    if message.order_id is not None:
        which = retailers.c.id == (
            select(orders.c.retailer_id).where(orders.c.id == message.order_id).scalar_subquery()
        )
    else:
        which = retailers.c.whatsapp_id == message.recipient
    row = (
        await connection.execute(
            select(retailers.c.id, retailers.c.opted_out_at, retailers.c.last_inbound_at).where(
                which
            )
        )
    ).first()
    if row is None:
        return None
    return Recipient(
        row.id,
        Customer(
            opted_out_at=None if row.opted_out_at is None else as_utc(row.opted_out_at),
            last_inbound_at=None if row.last_inbound_at is None else as_utc(row.last_inbound_at),
        ),
    )


async def hold(
    connection: AsyncConnection, message: OutboxMessage, reason: str, *, attempted: bool
) -> bool:
    """Hold the claimed ``message`` for ``reason``: it will not be sent. True if it was held.

    A row held before its send (``attempted`` false) gives back the attempt its claim
    counted; one the provider refused keeps it, with the refusal as its last error. Only the
    attempt holding the row may, as for a failed attempt.
    """
    table = outbox_messages
    values: dict[str, object] = {
        "status": OutboxStatus.HELD.value,
        "held_reason": reason[:MAX_REASON_CHARS],
    }
    if attempted:
        values["last_error"] = reason[:MAX_ERROR_CHARS]
    else:
        values["attempts"] = table.c.attempts - 1
    result = await connection.execute(
        update(table)
        .where(
            table.c.id == message.id,
            table.c.status == OutboxStatus.PENDING.value,
            table.c.attempts == message.attempts,
        )
        .values(**values)
    )
    return result.rowcount == 1
