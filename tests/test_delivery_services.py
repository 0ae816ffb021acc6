"""`queue_reply` and `keep_dead_letter` on the SQL unit of work, as a webhook calls them: inside
the claim's transaction, where they commit with it or not at all."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.db.tables import dead_letters, outbox_messages
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering import services
from whatsorder_idempotency.record import utcnow


async def _rows(db: AsyncEngine) -> tuple[list[str], int]:
    async with db.connect() as connection:
        keys = (
            await connection.scalars(
                select(outbox_messages.c.idempotency_key).order_by(outbox_messages.c.id)
            )
        ).all()
        letters = await connection.scalar(select(func.count()).select_from(dead_letters))
    return list(keys), int(letters or 0)


async def test_replies_and_dead_letters_commit_with_the_callers_transaction_once(
    db: AsyncEngine,
) -> None:
    for _ in range(2):  # the second time, as a redelivery: nothing new
        async with db.connect() as connection:
            uow = SqlUnitOfWork(connection)
            await services.queue_reply(uow, "meta", "9198", ["a", "b"], "reply:w1", utcnow())
            await services.keep_dead_letter(uow, "meta", "k1", "unreadable", "{}", utcnow())
            await connection.commit()

    assert await _rows(db) == (["reply:w1", "reply:w1:2"], 1)


async def test_nothing_is_kept_when_the_callers_transaction_rolls_back(db: AsyncEngine) -> None:
    async with db.connect() as connection:
        uow = SqlUnitOfWork(connection)
        await services.queue_reply(uow, "meta", "9198", ["a"], "reply:w1", utcnow())
        await services.keep_dead_letter(uow, "meta", "k1", "unreadable", "{}", utcnow())
        await connection.rollback()

    assert await _rows(db) == ([], 0)
