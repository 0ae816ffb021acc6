"""Outbound messages' delivery states: each only moves forward, however callbacks race."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from whatsorder.ordering.model import MessageState, furthest_states
from whatsorder.ordering.ports import UnitOfWork


async def record_message_status(
    uow: UnitOfWork,
    provider: str,
    message_id: str,
    status: str,
    error_code: str | None,
    now: datetime,
) -> bool:
    """Note an outbound message's state; a late, lower state never overwrites a later one.

    Returns whether the stored state changed.
    """
    async with uow:
        # One conditional upsert: two callbacks racing can never let the lower state win.
        changed = await uow.ordering.advance_message_status(
            provider, message_id, status, error_code, now
        )
        await uow.commit()
    return changed


async def record_message_states(
    uow: UnitOfWork, provider: str, states: Iterable[MessageState], now: datetime
) -> int:
    """Note many outbound messages' states at once, each only forward; how many moved."""
    async with uow:
        changed = await uow.ordering.advance_message_statuses(
            provider, furthest_states(states), now
        )
        await uow.commit()
    return changed
