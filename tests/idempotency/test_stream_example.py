"""The queue example: a Redis stream delivers a payment three times, one ledger row results."""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path
from types import ModuleType

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stream_consumer.py"


def load_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stream: str) -> ModuleType:
    monkeypatch.setenv("LEDGER_DATABASE", f"sqlite:///{tmp_path}/ledger.db")
    monkeypatch.setenv("PAYMENTS_STREAM", stream)
    spec = importlib.util.spec_from_file_location("stream_consumer", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_a_payment_delivered_three_times_is_posted_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stream = f"payments-test-{secrets.token_hex(6)}"
    example = load_example(monkeypatch, tmp_path, stream)
    redis = Redis.from_url(redis_url)
    try:
        await example.prepare(redis)
        payment = {"event_id": "evt_1", "amount": "4800"}
        await redis.xadd(stream, payment)
        await redis.xadd(stream, payment)  # the provider's retry: the same event again
        await redis.xadd(stream, {"event_id": "evt_2", "amount": "1200"})

        # Consumer A reads everything, posts the first message, then dies before its XACKs.
        read = await redis.xreadgroup(example.GROUP, "consumer-a", {stream: ">"}, count=10)
        _, first_fields = read[0][1][0]
        await example.post_payment({k.decode(): v.decode() for k, v in first_fields.items()})

        # Consumer B reclaims A's pending messages (idle past 0 ms here) and handles them all.
        handled = await example.consume_once(redis, "consumer-b", reclaim_idle_ms=0)
        pending = await redis.xpending(stream, example.GROUP)
        async with example.store.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(example.ledger.c.event_id, func.count()).group_by(
                        example.ledger.c.event_id
                    )
                )
            ).all()
    finally:
        await redis.delete(stream)
        await redis.aclose()
        await example.store.close()
    assert handled == 3
    assert pending["pending"] == 0
    assert sorted(rows) == [("evt_1", 1), ("evt_2", 1)]
