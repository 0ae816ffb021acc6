"""The Redis store's pool and step timeout (redis_pool.py): bounded, waiting, and a late answer
never reaches the next command."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as redis_asyncio

from whatsorder_idempotency import IdempotentRequest, StoredResponse
from whatsorder_idempotency.errors import StoreBusy, StoreUnavailable
from whatsorder_idempotency.stores.base import Claimed
from whatsorder_idempotency.stores.redis import RedisStore

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=4)
TTL = timedelta(hours=1)


@pytest.fixture
async def small_store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A store whose pool keeps one connection and waits 0.3 s for it; steps give up at 0.5 s."""
    store = RedisStore.from_url(
        redis_url, prefix=f"test-pool:{secrets.token_hex(6)}:", max_connections=1, timeout=0.3
    )
    store.command_timeout = 0.5
    yield store
    async for name in store.client.scan_iter(match=f"{store.prefix}*"):
        await store.client.delete(name)
    await store.close()


async def completed(store: RedisStore, key: str, body: bytes) -> None:
    request = IdempotentRequest(scope="s", key=key, fingerprint="f")
    claim = await store.claim(request, NOW, LEASE, TTL)
    assert isinstance(claim, Claimed)
    answer = StoredResponse(status=201, body=body, headers=(("content-type", "text/plain"),))
    assert await store.complete(request, claim.epoch, answer, NOW, TTL)


async def test_a_step_waits_for_the_one_connection_and_says_busy_when_none_is_freed(
    small_store: RedisStore,
) -> None:
    await completed(small_store, "a", b"A")
    pool = small_store.client.connection_pool
    taken = await pool.get_connection()  # type: ignore[no-untyped-call]
    started = time.monotonic()
    with pytest.raises(StoreBusy):
        await small_store.get("s", "a")
    assert 0.25 <= time.monotonic() - started < 0.5  # the pool's wait, not the step's timeout

    # Freed while a step waits: the step goes on with it.
    waiting = asyncio.ensure_future(small_store.get("s", "a"))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await pool.release(taken)
    record = await asyncio.wait_for(waiting, 1)
    assert record is not None
    assert record.response is not None
    assert record.response.body == b"A"
    # Many steps at once never open more than the bound.
    records = await asyncio.gather(*(small_store.get("s", "a") for _ in range(20)))
    assert all(found is not None for found in records)
    assert len(pool._available_connections) + len(pool._in_use_connections) == 1


async def test_a_step_that_redis_is_slow_to_answer_fails_closed_and_its_late_answer_is_dropped(
    small_store: RedisStore, redis_url: str
) -> None:
    await completed(small_store, "a", b"A")
    await completed(small_store, "b", b"B")
    admin = redis_asyncio.Redis.from_url(redis_url)
    try:
        await admin.client_pause(1000, all=True)  # every client's commands held for 1 s
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"no answer in 0\.5 s"):
            await small_store.get("s", "a")
        assert time.monotonic() - started < 0.8
        await asyncio.sleep(0.7)  # the pause is over: the late answer (a's) was sent by now
    finally:
        await admin.client_unpause()
        await admin.aclose()
    # The same one connection slot: b's step gets b's record, never a's late answer.
    record = await small_store.get("s", "b")
    assert record is not None
    assert record.response is not None
    assert record.response.body == b"B"


async def test_a_connection_redis_closed_while_idle_is_replaced_unseen(
    small_store: RedisStore, redis_url: str
) -> None:
    """As after a Redis restart: the pooled connection is found closed at checkout, not on use."""
    await completed(small_store, "a", b"A")
    own_id = await small_store.client.client_id()  # on the pool's one connection
    admin = redis_asyncio.Redis.from_url(redis_url)
    try:
        assert await admin.client_kill_filter(_id=own_id) == 1
    finally:
        await admin.aclose()
    await asyncio.sleep(0.3)  # the close reaches the client's socket, even on a busy machine
    record = await small_store.get("s", "a")
    assert record is not None
    assert await small_store.client.client_id() != own_id, "a new connection"


async def test_a_connection_given_back_twice_is_lent_to_one_step_at_a_time(
    small_store: RedisStore,
) -> None:
    pool = small_store.client.connection_pool
    taken = await pool.get_connection()  # type: ignore[no-untyped-call]
    await pool.release(taken)
    await pool.release(taken)  # a second return changes nothing
    first = await pool.get_connection()  # type: ignore[no-untyped-call]
    with pytest.raises(StoreBusy):  # the one slot is taken: no second lender of `first`
        await small_store.get("s", "a")
    await pool.release(first)
    assert await small_store.get("s", "a") is None


async def test_a_redis_that_lost_its_scripts_is_given_them_again_unseen(
    small_store: RedisStore, redis_url: str
) -> None:
    """As after a restart: the claim's EVALSHA meets NOSCRIPT, loads the script and goes on."""
    await completed(small_store, "a", b"A")
    admin = redis_asyncio.Redis.from_url(redis_url)
    try:
        await admin.script_flush()
    finally:
        await admin.aclose()
    found = await small_store.claim(IdempotentRequest("s", "a", "f"), NOW, LEASE, TTL)
    assert not isinstance(found, Claimed)
    assert found.response is not None
    assert found.response.body == b"A"
    fresh = await small_store.claim(IdempotentRequest("s", "b", "f"), NOW, LEASE, TTL)
    assert fresh == Claimed(epoch=1, takeover=False)


def test_scripts_are_packed_in_c_into_the_bytes_redis_py_would_send() -> None:
    """hiredis packs each EVALSHA (redis_pool.py); redis-py's own packing is the reference."""
    from redis.asyncio.connection import Connection

    from whatsorder_idempotency.stores import redis_pool

    assert redis_pool._pack_in_c is not None, "hiredis is installed with the engine's extra"
    commands = [
        ("EVALSHA", "a" * 40, 1, b"p:rec:\xff\x00key", 1_764_791_234_567_890, -1, 0, "fp"),
        ("EVALSHA", "b" * 40, 1, b"k", "source_ip", "127.0.0.1", "body", "Grüße ✓ 𝄞"),
        ("EVALSHA", "c" * 40, 1, b"k", 201, b"\x00" * 300_000, '[["content-type", "x/y"]]'),
    ]
    for command in commands:
        by_redis_py = b"".join(bytes(part) for part in Connection().pack_command(*command))
        assert redis_pool._pack_in_c(command) == by_redis_py
