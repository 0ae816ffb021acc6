"""The replies sent about an order, each with the furthest state its provider reported.

No column ties a reply to its order; the keys do. A Meta reply is queued in the outbox under
``reply:<wamid of the message it answers>`` (its parts ``:2``, ``:3``…), the Graph API's id for
it is noted on that row when sent, and Meta's status callbacks name that id. The messages that
touched an order are the one that placed it (``orders.source_message_id``, kept forever) and any
later one whose idempotency record names the order (a cancel or a STATUS, while the record
lives). Twilio's replies ride in the TwiML answer: Twilio never tells us their ids, so their
statuses cannot be tied to an order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import message_statuses, outbox_messages, webhook_idempotency
from whatsorder.ordering.services import reply_keys, reply_prefix
from whatsorder.providers import meta

# Replies are far under Meta's 4,096 characters (an order has at most 25 lines): one part,
# never more than a few; the keys looked up cover that many.
MAX_REPLY_PARTS = 4


async def order_replies(
    connection: AsyncConnection, order_id: int, source: str, source_message_id: str
) -> list[dict[str, Any]]:
    """The outbox replies about ``order_id``, oldest first, with their delivery state."""
    answered = {source_message_id} if source == meta.SOURCE else set()
    records = webhook_idempotency
    later = select(records.c.idempotency_key).where(
        records.c.order_id == order_id, records.c.webhook_type == meta.WEBHOOK_TYPE_MESSAGE
    )
    answered.update((await connection.execute(later)).scalars())
    if not answered:
        return []
    keys = [key for wamid in answered for key in reply_keys(reply_prefix(wamid), MAX_REPLY_PARTS)]
    outbox = outbox_messages
    statement = (
        with_delivery_states(
            outbox.c.idempotency_key,
            outbox.c.provider,
            outbox.c.status.label("outbox_status"),
            outbox.c.attempts,
            outbox.c.last_error,
            outbox.c.provider_message_id,
            outbox.c.created_at,
            outbox.c.sent_at,
        )
        .where(outbox.c.idempotency_key.in_(keys))
        .order_by(outbox.c.id)
    )
    return [dict(row._mapping) for row in await connection.execute(statement)]


def with_delivery_states(*columns: ColumnElement[Any]) -> Select[Any]:
    """Outbox rows' ``columns`` with the furthest delivery state their provider reported for
    the message id noted when each was sent (``status``, ``error_code``, ``updated_at``;
    NULL until a status came)."""
    outbox, states = outbox_messages, message_statuses
    return select(*columns, states.c.status, states.c.error_code, states.c.updated_at).select_from(
        outbox.outerjoin(
            states,
            and_(
                states.c.provider == outbox.c.provider,
                states.c.message_id == outbox.c.provider_message_id,
            ),
        )
    )
