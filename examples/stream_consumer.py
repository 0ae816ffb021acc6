"""A Redis Streams consumer that posts each payment to its ledger once, however it is delivered.

Queues deliver *at least* once: a provider retries an event and it lands in the stream twice,
or a consumer dies after its write but before ``XACK`` and another consumer claims the message
again. ``@idempotent`` keys the work by the event's own id, and the ledger row is written on
``idempotent_connection()``, so it commits with the record of the run: exactly one row.

    LEDGER_DATABASE=sqlite:///ledger.db python examples/stream_consumer.py
"""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import Column, Integer, MetaData, String, Table, insert

from whatsorder_idempotency import SqlStore, idempotent, idempotent_connection, open_store

STREAM = os.environ.get("PAYMENTS_STREAM", "payments")
GROUP = "ledger"
store = open_store(os.environ.get("LEDGER_DATABASE", "sqlite:///ledger.db"))
assert isinstance(store, SqlStore), "the ledger shares the idempotency store's database"

metadata = MetaData()
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("amount", Integer, nullable=False),
)


@idempotent(store, key=lambda event: event["event_id"], scope="ledger.post_payment")
async def post_payment(event: dict[str, str]) -> dict[str, object]:
    connection = await idempotent_connection()
    row = await connection.execute(
        insert(ledger).values(event_id=event["event_id"], amount=int(event["amount"]))
    )
    return {"entry": row.inserted_primary_key[0]}


async def prepare(redis: Redis) -> None:
    async with store.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    try:
        await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def consume_once(redis: Redis, consumer: str, *, reclaim_idle_ms: int = 30_000) -> int:
    """One pass: reclaim what a dead consumer left pending, read what is new; ack each one
    after it is posted. Returns how many messages were handled."""
    _, reclaimed, _ = await redis.xautoclaim(STREAM, GROUP, consumer, reclaim_idle_ms, "0-0")
    fresh = await redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=100, block=100)
    messages = list(reclaimed) + [message for _, batch in fresh for message in batch]
    for message_id, fields in messages:
        event = {name.decode(): value.decode() for name, value in fields.items()}
        await post_payment(event)
        await redis.xack(STREAM, GROUP, message_id)
    return len(messages)


async def main() -> None:
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    await prepare(redis)
    while True:
        await consume_once(redis, consumer=f"consumer-{os.getpid()}")


if __name__ == "__main__":
    asyncio.run(main())
