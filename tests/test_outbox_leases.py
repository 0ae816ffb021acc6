"""The outbox's leases: a row is never sent by a second sender while its first one is alive.

A Graph API that answers correctly but slowly (70–90 % of the sender's timeout) is served over
real HTTP on 127.0.0.1; several senders, each on an engine of its own as separate workers are,
share one queue. Every reply must reach the Graph API exactly once. On SQLite and PostgreSQL.
Times are scaled down (a 1 s timeout) so a run takes seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from fake_graph import FakeGraph, serving
from support import META_SENDER, new_wamid
from whatsorder.db.engine import open_database
from whatsorder.db.outbox import OutboxRepository, replies_sent_twice
from whatsorder.db.tables import outbox_messages
from whatsorder.outbox import OutboxSender
from whatsorder.providers import meta
from whatsorder_idempotency.record import utcnow

PHONE_NUMBER_ID = "106540352242922"
ACCESS_TOKEN = "test-graph-access-token"
TIMEOUT = 2.0  # the sender's send timeout, in seconds
# Above it with room for a loaded machine's stalls; far below what 20 slow sends in a row take
# (what one lease covered before each row had its own).
LEASE = timedelta(seconds=4)
REPLIES = 24
SENDERS = 4

Asgi = Any  # an ASGI application: (scope, receive, send) -> None


def slowly(app: Asgi, low: float, high: float) -> Asgi:
    """``app``, answering each request after a pause of ``low``–``high`` seconds."""

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(random.uniform(low, high))
        await app(scope, receive, send)

    return slow


async def queue_replies(db: AsyncEngine, count: int) -> list[str]:
    """``count`` pending replies, as the webhook would have queued them; their keys."""
    keys = [f"reply:{new_wamid()}" for _ in range(count)]
    now = utcnow()
    async with db.begin() as connection:
        outbox = OutboxRepository(connection)
        for number, key in enumerate(keys):
            await outbox.enqueue(meta.SOURCE, META_SENDER, f"Reply {number}", key, now)
    return keys


async def outbox_rows(db: AsyncEngine) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        result = await connection.execute(select(outbox_messages).order_by(outbox_messages.c.id))
        return [dict(row) for row in result.mappings()]


async def audit_duplicates(db: AsyncEngine) -> list[str]:
    async with db.connect() as connection:
        return await replies_sent_twice(connection)


def dripping(pause: float) -> Starlette:
    """A Graph API that accepts every send but drips its answer, ``pause`` between bytes."""
    answer = b'{"messaging_product": "whatsapp", "messages": [{"id": "wamid.drip"}]}'

    async def drip() -> AsyncIterable[bytes]:
        for byte in answer:
            await asyncio.sleep(pause)
            yield bytes([byte])

    async def send(_request: Request) -> StreamingResponse:
        return StreamingResponse(drip(), media_type="application/json")

    return Starlette(
        routes=[Route("/{version}/{phone_number_id}/messages", send, methods=["POST"])]
    )


@pytest.fixture
async def workers(database_url: str) -> AsyncIterator[list[AsyncEngine]]:
    """An engine per sender, as separate worker processes would each have."""
    engines = [open_database(database_url) for _ in range(SENDERS)]
    yield engines
    for engine in engines:
        await engine.dispose()


async def test_slow_answers_to_concurrent_senders_send_each_reply_once(
    db: AsyncEngine, workers: list[AsyncEngine]
) -> None:
    keys = await queue_replies(db, REPLIES)
    fake = FakeGraph()
    # Slow but well inside the timeout even on a loaded machine: a send cut off by its own
    # deadline is retried by design, and would count here as a second POST.
    with serving(slowly(fake.app, 0.3 * TIMEOUT, 0.45 * TIMEOUT)) as base_url:
        senders = [
            OutboxSender(
                engine,
                f"{base_url}/v21.0",
                ACCESS_TOKEN,
                PHONE_NUMBER_ID,
                claim_lease=LEASE,
                timeout=TIMEOUT,
            )
            for engine in workers
        ]
        stop = asyncio.Event()
        running = [asyncio.create_task(sender.run(stop, interval=0.05)) for sender in senders]
        try:
            async with asyncio.timeout(60):
                for _ in range(600):
                    rows = await outbox_rows(db)
                    if all(row["status"] == "sent" for row in rows):
                        break
                    await asyncio.sleep(0.1)
                # A little longer: a second send of a row already marked sent would show now.
                await asyncio.sleep(LEASE.total_seconds() * 2)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*running), timeout=30)

    posts = Counter(send.idempotency_key for send in fake.sends)
    twice = {key: n for key, n in posts.items() if n > 1}
    assert not twice, f"{len(twice)} of {REPLIES} replies were POSTed more than once"
    assert posts == Counter(keys)
    rows = await outbox_rows(db)
    assert [(row["status"], row["sends"]) for row in rows] == [("sent", 1)] * REPLIES
    assert await audit_duplicates(db) == []


async def test_a_reply_accepted_twice_is_reported_and_keeps_its_first_send(
    db: AsyncEngine,
) -> None:
    [key] = await queue_replies(db, 1)
    now = utcnow()
    lease = timedelta(minutes=2)
    async with db.begin() as connection:
        [first] = await OutboxRepository(connection).claim_due(meta.SOURCE, now, 10, lease)
    later = now + lease + timedelta(seconds=1)  # the first sender's lease has passed
    async with db.begin() as connection:
        [second] = await OutboxRepository(connection).claim_due(meta.SOURCE, later, 10, lease)
    assert (first.attempts, second.attempts) == (1, 2)

    async with db.begin() as connection:
        outbox = OutboxRepository(connection)
        assert await outbox.mark_sent(first, "wamid.first", now) is True
        assert await outbox.mark_sent(second, "wamid.second", later) is False

    [row] = await outbox_rows(db)
    assert (row["status"], row["provider_message_id"], row["sends"]) == (
        "sent",
        "wamid.first",
        2,
    )
    assert await audit_duplicates(db) == [f"outbox reply {key!r} was accepted 2 times"]


async def test_an_answer_dripping_past_the_timeout_is_cut_off_within_the_lease(
    db: AsyncEngine,
) -> None:
    # Each byte comes well inside httpx's read timeout; the whole answer takes about 7 s.
    await queue_replies(db, 1)
    with serving(dripping(pause=0.1)) as base_url:
        sender = OutboxSender(
            db,
            f"{base_url}/v21.0",
            ACCESS_TOKEN,
            PHONE_NUMBER_ID,
            claim_lease=LEASE,
            timeout=TIMEOUT,
        )
        async with sender:
            started = time.monotonic()
            assert await asyncio.wait_for(sender.send_due(), timeout=10) == 0
            elapsed = time.monotonic() - started

    assert elapsed < LEASE.total_seconds()
    [row] = await outbox_rows(db)
    assert (row["status"], row["attempts"], row["sends"]) == ("pending", 1, 0)
    assert row["last_error"] == f"no answer within {TIMEOUT} s"


@pytest.mark.parametrize("lease", [timedelta(seconds=5), timedelta(seconds=10)])
async def test_a_lease_that_does_not_outlast_the_send_timeout_is_refused(
    lease: timedelta, tmp_path: Path
) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'unused.db'}")
    try:
        with pytest.raises(ValueError, match="must exceed the send timeout"):
            OutboxSender(
                engine,
                "http://graph.test",
                ACCESS_TOKEN,
                PHONE_NUMBER_ID,
                claim_lease=lease,
                timeout=10.0,
            )
    finally:
        await engine.dispose()
