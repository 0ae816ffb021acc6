"""The outbox's backlog for the delivery dashboard: how many replies wait, how long the oldest has.

The sender publishes it after every round, with Meta's credentials or without them: replies that
pile up because nothing can send them are what the stuck-outbox alert is for.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import FakeGraph
from monitoring import key, scrape
from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db.outbox import OutboxBacklog, OutboxRepository
from whatsorder.db.tables import outbox_messages
from whatsorder.outbox import OutboxSender
from whatsorder.providers import meta

PENDING = "whatsorder_outbox_pending_messages"
OLDEST = "whatsorder_outbox_oldest_pending_age_seconds"
GRAPH = "http://graph.test/v21.0"
NOT_PUBLISHED = -1.0  # what the gauges are set to before a test waits for the sender to count


async def queue(
    db: AsyncEngine, reply_key: str, created_at: datetime, provider: str = meta.SOURCE
) -> None:
    async with db.begin() as connection:
        added = await OutboxRepository(connection).enqueue(
            provider, "919876543210", f"reply {reply_key}", reply_key, created_at
        )
    assert added


def published() -> tuple[float | None, float | None]:
    """The gauges as this process's registry holds them (what a scrape of it reports)."""
    labels = {"provider": meta.SOURCE}
    return REGISTRY.get_sample_value(PENDING, labels), REGISTRY.get_sample_value(OLDEST, labels)


async def until_published() -> tuple[float | None, float | None]:
    """Wait (bounded) for the sender's first count after the gauges were set aside."""
    async with asyncio.timeout(15):
        while published()[0] == NOT_PUBLISHED:  # noqa: ASYNC110 (set by the sender's task)
            await asyncio.sleep(0.02)
    return published()


async def test_the_backlog_is_the_pending_replies_and_the_age_of_the_oldest(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    now = utcnow()
    sender = OutboxSender(db, GRAPH, None, None)
    assert await sender.publish_backlog(now) == OutboxBacklog(pending=0, oldest_age_seconds=0.0)

    await queue(db, "given-up", now - timedelta(minutes=30))
    await queue(db, "sent", now - timedelta(minutes=20))
    await queue(db, "retrying", now - timedelta(minutes=10))
    await queue(db, "waiting", now - timedelta(minutes=2))
    await queue(db, "just-queued", now)
    await queue(db, "another-provider", now - timedelta(hours=1), provider="other")
    async with db.begin() as connection:
        outbox = OutboxRepository(connection)
        given_up, sent, retrying = await outbox.claim_due(meta.SOURCE, now, 3, timedelta(minutes=2))
        assert await outbox.mark_failed_attempt(given_up, "HTTP 400", retry_at=None)
        assert await outbox.mark_sent(sent, "wamid.sent", now)
        assert await outbox.mark_failed_attempt(retrying, "HTTP 503", now + timedelta(minutes=1))

    # Pending: retrying (queued 10 min ago), waiting and just-queued; not the sent or given-up
    # rows, older as they are, nor another provider's.
    backlog = await sender.publish_backlog(now)
    assert backlog == OutboxBacklog(pending=3, oldest_age_seconds=600.0)
    samples = await scrape(client)
    assert samples[key(PENDING, provider=meta.SOURCE)] == 3
    assert samples[key(OLDEST, provider=meta.SOURCE)] == 600.0


async def test_a_round_of_the_sender_publishes_the_backlog_it_leaves(db: AsyncEngine) -> None:
    queued = utcnow()
    await queue(db, "fails-once", queued - timedelta(minutes=10))
    await queue(db, "sent-at-once", queued - timedelta(minutes=5))
    fake = FakeGraph(failures=[503])  # the older reply: retried in 5 s; the newer: sent
    observability.set_outbox_backlog(meta.SOURCE, -1, NOT_PUBLISHED)
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://graph.test") as graph:
        sender = OutboxSender(db, GRAPH, "token", "1065", client=graph)
        stop = asyncio.Event()
        running = asyncio.create_task(sender.run(stop, interval=60))  # one round, then waits
        pending, oldest = await until_published()
        stop.set()
        await asyncio.wait_for(running, timeout=5)

    assert len(fake.sends) == 2
    assert len(fake.delivered) == 1
    assert pending == 1
    assert oldest is not None
    assert 600 <= oldest < 600 + (utcnow() - queued).total_seconds()


async def test_a_count_that_fails_is_logged_and_the_sender_goes_on(
    db: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await queue(db, "waiting", utcnow())
    count = OutboxRepository.backlog
    failures = [ConnectionError("the database went away")]

    async def backlog_failing_once(
        self: OutboxRepository, provider: str, now: datetime
    ) -> OutboxBacklog:
        if failures:
            raise failures.pop()
        return await count(self, provider, now)

    monkeypatch.setattr(OutboxRepository, "backlog", backlog_failing_once)
    observability.set_outbox_backlog(meta.SOURCE, -1, NOT_PUBLISHED)
    sender = OutboxSender(db, GRAPH, None, None)
    stop = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="whatsorder.outbox"):
        running = asyncio.create_task(sender.run(stop, interval=0.05))
        pending, _oldest = await until_published()  # the second round's count
        stop.set()
        await asyncio.wait_for(running, timeout=5)

    assert pending == 1
    assert [r.getMessage() for r in caplog.records] == ["Outbox backlog not counted"]


async def test_without_a_meta_token_the_service_still_publishes_its_backlog(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    settings = app.state.runtime.settings
    assert settings.meta_access_token is None
    assert settings.meta_phone_number_id is None
    queued = utcnow()
    await queue(db, "never-sent", queued - timedelta(minutes=3))
    observability.set_outbox_backlog(meta.SOURCE, -1, NOT_PUBLISHED)

    async with app.router.lifespan_context(app):
        await until_published()
        samples = await scrape(client)

    assert samples[key(PENDING, provider=meta.SOURCE)] == 1
    oldest = samples[key(OLDEST, provider=meta.SOURCE)]
    assert 180 <= oldest < 180 + (utcnow() - queued).total_seconds()
    async with db.connect() as connection:
        rows = (await connection.execute(select(outbox_messages))).mappings().all()
    assert [(row["status"], row["attempts"]) for row in rows] == [("pending", 0)]
