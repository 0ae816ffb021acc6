"""The audit of fulfilment: states that match their transitions, one notification per change.

- every order's ``fulfilment`` is the ``to_state`` of its last transition; an order with none
  is placed (or was cancelled before fulfilment existed, migration 0008);
- an order is cancelled in fulfilment exactly when its payment status is cancelled (both move
  in one transaction);
- every transition not made by the customer (whose reply tells them) has exactly one
  notification in the outbox, whatever became of it (pending, sent, held, failed), and no
  notification announces a transition that did not happen.
"""

from __future__ import annotations

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import order_transitions, orders, outbox_messages
from whatsorder.ordering.model import Fulfilment, OrderStatus, order_number
from whatsorder.ordering.services.fulfilment import CUSTOMER


async def fulfilment_audit(connection: AsyncConnection) -> list[str]:
    """Every violated invariant of fulfilment, in words."""
    return [
        *await _states_off_their_transitions(connection),
        *await _cancelled_apart(connection),
        *await _notifications_off_their_transitions(connection),
    ]


async def _states_off_their_transitions(connection: AsyncConnection) -> list[str]:
    last = (
        select(order_transitions.c.order_id, func.max(order_transitions.c.id).label("last_id"))
        .group_by(order_transitions.c.order_id)
        .subquery()
    )
    rows = await connection.execute(
        select(
            orders.c.id,
            orders.c.status,
            orders.c.fulfilment,
            order_transitions.c.to_state,
        )
        .select_from(
            orders.outerjoin(last, last.c.order_id == orders.c.id).outerjoin(
                order_transitions, order_transitions.c.id == last.c.last_id
            )
        )
        .where(orders.c.fulfilment != func.coalesce(order_transitions.c.to_state, "placed"))
    )
    problems: list[str] = []
    for row in rows:
        if row.to_state is None:
            before_0008 = (
                row.fulfilment == Fulfilment.CANCELLED and row.status == OrderStatus.CANCELLED
            )
            if not before_0008:
                problems.append(
                    f"{order_number(row.id)} is {row.fulfilment} but no transition took it there"
                )
            continue
        problems.append(
            f"{order_number(row.id)} is {row.fulfilment} but its last transition is to "
            f"{row.to_state}"
        )
    return problems


async def _cancelled_apart(connection: AsyncConnection) -> list[str]:
    cancelled_in_fulfilment = orders.c.fulfilment == Fulfilment.CANCELLED.value
    cancelled_in_payment = orders.c.status == OrderStatus.CANCELLED.value
    rows = await connection.execute(
        select(orders.c.id, orders.c.status, orders.c.fulfilment).where(
            cancelled_in_fulfilment != cancelled_in_payment
        )
    )
    return [
        f"{order_number(row.id)} is {row.status} in payment but {row.fulfilment} in fulfilment"
        for row in rows
    ]


async def _notifications_off_their_transitions(connection: AsyncConnection) -> list[str]:
    transitions, outbox = order_transitions, outbox_messages
    counted = (
        select(outbox.c.order_id, outbox.c.event, func.count().label("n"))
        .where(outbox.c.order_id.is_not(None), outbox.c.event.is_not(None))
        .group_by(outbox.c.order_id, outbox.c.event)
        .subquery()
    )
    unannounced = await connection.execute(
        select(transitions.c.order_id, transitions.c.to_state, counted.c.n)
        .outerjoin(
            counted,
            and_(
                counted.c.order_id == transitions.c.order_id,
                counted.c.event == transitions.c.to_state,
            ),
        )
        .where(transitions.c.actor != CUSTOMER, func.coalesce(counted.c.n, 0) != 1)
        .order_by(transitions.c.id)
    )
    problems = [
        f"{order_number(row.order_id)} became {row.to_state} with {row.n or 0} notifications "
        "(expected exactly one)"
        for row in unannounced
    ]
    orphans = await connection.execute(
        select(counted.c.order_id, counted.c.event)
        .outerjoin(
            transitions,
            and_(
                transitions.c.order_id == counted.c.order_id,
                transitions.c.to_state == counted.c.event,
            ),
        )
        .where(transitions.c.id.is_(None))
        .order_by(counted.c.order_id)
    )
    problems.extend(
        f"a notification says {order_number(row.order_id)} became {row.event}, "
        "but no transition took it there"
        for row in orphans
    )
    return problems
