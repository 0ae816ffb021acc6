"""What operators do and read about fulfilment, from the console and the command line.

An operator's transition runs the service (`whatsorder.ordering.services.transition`) and
writes its line in the operators' audit trail in the same transaction. The order page reads the
transitions (who, when) and the notifications: the outbox rows of the order, each with the
furthest delivery state its provider reported for the message id noted when it was sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder.clock import utcnow
from whatsorder.db.console_replies import with_delivery_states
from whatsorder.db.operators import record_action
from whatsorder.db.tables import order_transitions, outbox_messages
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering.fulfilment import Action
from whatsorder.ordering.services import TransitionOutcome, transition


async def operator_transition(
    database: AsyncEngine,
    order_id: int,
    action: Action,
    actor: str,
    now: datetime,
    address: str | None = None,
) -> TransitionOutcome:
    """An operator's transition and its line in the audit trail, in one transaction: both
    commit, or neither. A repeat changes nothing and writes no line. Raises what `transition`
    raises (`NoSuchOrder`, `TransitionRefused`)."""
    async with database.connect() as connection, connection.begin():
        outcome = await transition(SqlUnitOfWork(connection), order_id, action, actor, now)
        if outcome.changed:
            await record_action(
                connection,
                operator=actor,
                action=f"order.{action.value}",
                target=outcome.number,
                before={"fulfilment": outcome.from_state.value},
                after={"fulfilment": outcome.to_state.value},
                address=address,
                now=now,
            )
    return outcome


async def transitions_of(connection: AsyncConnection, order_id: int) -> list[dict[str, Any]]:
    """The order's transitions, oldest first: from, to, who and when."""
    rows = await connection.execute(
        select(order_transitions)
        .where(order_transitions.c.order_id == order_id)
        .order_by(order_transitions.c.id)
    )
    return [dict(row._mapping) for row in rows]


async def notifications_of(connection: AsyncConnection, order_id: int) -> list[dict[str, Any]]:
    """The order's notifications, oldest first, each with its provider's delivery state."""
    outbox = outbox_messages
    statement = (
        with_delivery_states(
            outbox.c.event,
            outbox.c.provider,
            outbox.c.idempotency_key,
            outbox.c.status.label("outbox_status"),
            outbox.c.held_reason,
            outbox.c.sent_as,
            outbox.c.attempts,
            outbox.c.last_error,
            outbox.c.created_at,
            outbox.c.sent_at,
        )
        .where(outbox.c.order_id == order_id)
        .order_by(outbox.c.id)
    )
    return [dict(row._mapping) for row in await connection.execute(statement)]


class ConsoleFulfilment:
    """The console's door to fulfilment (reached through the runtime, like its other queries)."""

    def __init__(self, database: AsyncEngine) -> None:
        self._database = database

    async def transition(
        self, order_id: int, action: Action, operator: str, address: str
    ) -> TransitionOutcome:
        return await operator_transition(
            self._database, order_id, action, operator, utcnow(), address
        )
