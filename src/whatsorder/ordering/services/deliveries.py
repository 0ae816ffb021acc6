"""What a webhook leaves behind besides orders: replies to send, and what it could not process.

Both are written in the webhook's own unit of work, keyed by what they answer, so a redelivery
(even after its idempotency record expired) adds no second reply and no second dead letter.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from whatsorder.ordering.ports import UnitOfWork


def reply_prefix(message_id: str) -> str:
    """The outbox key of the reply to ``message_id`` (of its first part)."""
    return f"reply:{message_id}"


def reply_keys(key_prefix: str, count: int) -> list[str]:
    """The outbox keys of a reply's parts: ``<prefix>``, then ``<prefix>:2``, ``<prefix>:3``…"""
    return [key_prefix if index == 1 else f"{key_prefix}:{index}" for index in range(1, count + 1)]


async def queue_reply(
    uow: UnitOfWork,
    provider: str,
    recipient: str,
    parts: Iterable[str],
    key_prefix: str,
    now: datetime,
) -> int:
    """Put a reply (already split into the provider's ``parts``) in the outbox; how many parts
    were new. It exists exactly when what it answers does: both commit or neither.

    The sender sends each part with its key as the Idempotency-Key (`reply_keys`).
    """
    parts = list(parts)
    added = 0
    async with uow:
        for part, key in zip(parts, reply_keys(key_prefix, len(parts)), strict=True):
            added += await uow.outbox.enqueue(provider, recipient, part, key, now)
        await uow.commit()
    return added


async def keep_dead_letter(
    uow: UnitOfWork,
    provider: str,
    delivery_key: str,
    reason: str,
    body: str,
    now: datetime,
    payload: str | None = None,
) -> bool:
    """Keep ``body`` (already redacted) with why it could not be processed, once per
    ``(provider, delivery_key)``; True if it was new. The provider is still answered 200.
    ``payload`` (unredacted, never shown) is what an operator's re-drive processes again."""
    async with uow:
        added = await uow.dead_letters.add(provider, delivery_key, reason, body, now, payload)
        await uow.commit()
    return added
