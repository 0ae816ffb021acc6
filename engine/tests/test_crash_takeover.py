"""A holder killed or paused mid-request, in real servers: its key is taken over within 5 s.

Two uvicorn processes, A and B, serve ``guarded_app`` (the middleware in lease mode, default
options) on one store. A request's handler in A notes its effect, then sleeps; A is killed
(SIGKILL) or frozen (SIGSTOP) there, and the client's retry goes to B. The retry waits in
flight and takes over once A's lease has run out, never before (fencing); a frozen A that wakes
cannot store its answer over B's. The figures are shown in the run's "measured" summary.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from served import ServedApp, served
from whatsorder_idempotency import IdempotencyRecord, open_store
from whatsorder_idempotency.config import DEFAULT_LEASE
from whatsorder_idempotency.record import as_utc
from whatsorder_idempotency.stores.redis import RedisStore

pytestmark = pytest.mark.slow

PROMISE = 5.0  # seconds from the kill to the retry's answer (the promise)
SCOPE = "POST /orders"  # the middleware's default scope for the route
BODY = b'{"sku": "ATTA-5KG", "quantity": 2}'


@pytest.fixture
def key() -> str:
    return "order-" + secrets.token_hex(6)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path, key: str) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/keys.db"
    elif request.param == "postgres":
        yield request.getfixturevalue("postgres_url")
    else:
        url: str = request.getfixturevalue("redis_url")
        yield url
        asyncio.run(_forget_redis_record(url, key))


def stores(*kinds: str) -> pytest.MarkDecorator:
    marks = {"postgres": [pytest.mark.postgres]}
    params = [pytest.param(kind, marks=marks.get(kind, []), id=kind) for kind in kinds]
    return pytest.mark.parametrize("store_url", params, indirect=True)


@contextmanager
def two_servers(
    store_url: str, tmp_path: Path, *, a_sleeps: float
) -> Iterator[tuple[ServedApp, ServedApp, Path]]:
    """Servers A (whose handler sleeps ``a_sleeps``) and B (answers at once) on one store."""
    effects = tmp_path / "effects.txt"
    shared = {"GUARDED_STORE_URL": store_url, "GUARDED_EFFECTS": str(effects)}
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(
                served(
                    "guarded_app:app",
                    {**shared, "GUARDED_NAME": name, "GUARDED_SLEEP": str(sleep)},
                    tmp_path / f"{name}.log",
                )
            )
            for name, sleep in (("A", a_sleeps), ("B", 0))
        )
        yield a, b, effects


def order(server: ServedApp, key: str, timeout: float = 30) -> httpx.Response:
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    return httpx.post(f"{server.url}/orders", content=BODY, headers=headers, timeout=timeout)


def runs(effects: Path, key: str) -> list[tuple[str, float]]:
    """Each run of the handler for ``key``: the server's name and when it began (wall clock)."""
    lines = effects.read_text().splitlines() if effects.exists() else []
    return [(name, float(at)) for name, k, at in (line.split() for line in lines) if k == key]


def until_running(effects: Path, key: str, server: ServedApp, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not runs(effects, key):
        assert time.monotonic() < deadline, f"the handler never ran:\n{server.log_tail()}"
        time.sleep(0.02)


def retry_until_answered(
    server: ServedApp, key: str, give_up_at: float
) -> tuple[httpx.Response, int]:
    """The retry, sent again on 409 (bounded); its answer and how many 409s came first."""
    refusals = 0
    while True:
        response = order(server, key, timeout=max(1.0, give_up_at - time.monotonic()))
        if response.status_code != 409 or time.monotonic() >= give_up_at or refusals >= 50:
            return response, refusals
        refusals += 1
        time.sleep(0.1)


async def record_of(store_url: str, key: str) -> IdempotencyRecord | None:
    store = open_store(store_url)
    try:
        return await store.get(SCOPE, key)
    finally:
        await store.close()


async def _forget_redis_record(url: str, key: str) -> None:
    store = RedisStore.from_url(url)
    try:
        await store.client.delete(store.record_key(SCOPE, key))
    finally:
        await store.close()


def lease_end(store_url: str, key: str) -> float:
    record = asyncio.run(record_of(store_url, key))
    assert record is not None
    assert record.locked_until is not None
    return as_utc(record.locked_until).timestamp()


@stores("sqlite", "postgres", "redis")
def test_a_killed_holders_key_is_taken_over_within_5_s_and_not_before_its_lease_ends(
    store_url: str, key: str, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    with ThreadPoolExecutor(1) as pool, two_servers(store_url, tmp_path, a_sleeps=60) as servers:
        a, b, effects = servers
        first = pool.submit(order, a, key)
        until_running(effects, key, a)
        killed_at, killed_wall = a.kill(), time.time()
        lease_ends = lease_end(store_url, key)  # as A last renewed it
        retry, refusals = retry_until_answered(b, key, killed_at + 2 * PROMISE)
        took = time.monotonic() - killed_at
        assert first.exception(timeout=10) is not None  # A's client never got an answer

    ran = runs(effects, key)
    assert [name for name, _ in ran] == ["A", "B"], f"the handler's runs: {ran}"
    b_began = ran[1][1]
    figures = (
        f"kill to answer {took:.2f} s; A's lease ended {lease_ends - killed_wall:.2f} s after "
        f"the kill, B's run began {b_began - lease_ends:.3f} s after that; 409s: {refusals}"
    )
    print(figures)
    record_property("kill_to_answer_s", round(took, 2))
    record_property("lease_left_at_kill_s", round(lease_ends - killed_wall, 2))
    record_property("takeover_after_lease_end_s", round(b_began - lease_ends, 3))
    assert retry.status_code == 201, f"{retry.status_code} {retry.text}; {figures}"
    assert "idempotent-replayed" not in retry.headers
    assert retry.json() == {"served_by": "B"}
    # 10 ms: the two moments are rounded differently (both are this machine's wall clock).
    assert b_began >= lease_ends - 0.01, f"taken over before A's lease ended; {figures}"
    assert lease_ends - killed_wall <= DEFAULT_LEASE.total_seconds(), figures
    assert took <= PROMISE, figures


@stores("postgres", "redis")
def test_a_paused_holder_is_taken_over_and_when_it_wakes_its_answer_is_not_stored(
    store_url: str, key: str, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """In lease mode A's effect happened and A still answers its own client: fencing promises
    only that A's answer is not stored over B's, so every later replay is B's."""
    with ThreadPoolExecutor(1) as pool, two_servers(store_url, tmp_path, a_sleeps=3) as servers:
        a, b, effects = servers
        first = pool.submit(order, a, key)
        until_running(effects, key, a)
        paused_at = a.pause()
        retry, refusals = retry_until_answered(b, key, paused_at + 2 * PROMISE)
        took = time.monotonic() - paused_at
        a.resume()
        a_answer = first.result(timeout=15)  # A finished: its completion was tried and refused
        replays = [order(server, key) for server in (a, b, a, b)]
        record = asyncio.run(record_of(store_url, key))

    figures = f"pause to B's answer {took:.2f} s; 409s: {refusals}"
    print(figures)
    record_property("pause_to_answer_s", round(took, 2))
    assert retry.status_code == 201, f"{retry.status_code} {retry.text}; {figures}"
    assert "idempotent-replayed" not in retry.headers
    assert retry.json() == {"served_by": "B"}
    assert took <= PROMISE, figures
    assert [name for name, _ in runs(effects, key)] == ["A", "B"]
    assert (a_answer.status_code, a_answer.json()) == (201, {"served_by": "A"})
    assert "idempotent-replayed" not in a_answer.headers
    for replay in replays:
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json() == {"served_by": "B"}
    assert record is not None
    assert record.epoch == 2
    assert record.response is not None
    assert record.response.body == b'{"served_by":"B"}'
