"""Dependencies going away under load: quick 503s meanwhile, and every retry takes effect once.

PostgreSQL is a cluster of the suite's own (``faults.pg_cluster``), stopped and started with
``pg_ctl``; Redis is a ``redis-server`` of its own on a spare port. The shared servers are
never touched.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import asyncpg
import pytest

from conftest import make_settings
from faults.books import audit, check_books, count_rows, restock
from faults.harness import provider_secrets, serving
from faults.modes import report, scaled
from faults.pg_cluster import PostgresCluster
from faults.provider import Delivery, Provider, Shop, Tally
from faults.redis_server import RedisServer, own_redis
from support import (
    INBOUND_PATH,
    app_client,
    assert_problem,
    encode,
    free_port,
    inbound_form,
    running_server,
    server_env,
    signed_headers,
)
from whatsorder.web.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def test_a_database_shutting_down_answers_503_and_keeps_nothing(
    private_postgres: PostgresCluster, private_database: str
) -> None:
    """While PostgreSQL shuts down it refuses new sessions ("the database system is shutting
    down", SQLSTATE 57P03): the provider must get a 503 to retry, never a 500."""
    held = await asyncpg.connect(private_database)  # a smart shutdown waits for this session
    try:
        private_postgres.stop("smart", wait=False)
        await private_postgres.until_shutting_down()
        pairs = inbound_form("ORDER 1 x ATTA-5KG")
        async with app_client(create_app(make_settings(private_database))) as client:
            response = await client.post(
                INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
            )
        assert_problem(response, 503, "store-unavailable")
        assert response.headers["retry-after"]
    finally:
        await held.close()
        private_postgres.wait_stopped()
        private_postgres.start()
    assert await count_rows(private_database, "orders") == 0


async def _execute(database_url: str, statement: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _effects(database_url: str) -> Counter[str]:
    """How many times each key's request ran in the lease-mode app."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT idempotency_key FROM effects")
    finally:
        await connection.close()
    return Counter(row["idempotency_key"] for row in rows)


OUTAGES = scaled(1, 3)  # outages of each kind per test
OUTAGE_SECONDS = scaled(2, 5)
STEADY_SECONDS = 1.0  # of traffic before each outage and after the last
QUICK_ANSWER = 5.0  # seconds: well inside Twilio's 15 s, "a few seconds"


def _during(tally: Tally, windows: list[tuple[float, float]]) -> list[tuple[float, str]]:
    """(seconds taken, answer) of the attempts sent while the dependency was down."""
    return [
        (took, answer)
        for sent, took, answer in tally.timeline
        if any(start <= sent <= end for start, end in windows)
    ]


def _assert_outage_handled(tally: Tally, during: list[tuple[float, str]]) -> None:
    assert tally.answers["500"] == 0, f"500s reached the provider: {tally.bodies}"
    assert tally.answers["timeout"] == 0, "an attempt hung past the provider's timeout"
    assert not tally.refused, tally.refused[:3]
    assert not tally.unanswered, f"{len(tally.unanswered)} deliveries never acknowledged"
    refusals = [answer for _took, answer in during if answer != "200"]
    assert refusals, "no request met the outage"
    assert set(refusals) <= {"503", "409"}, f"answers during the outage: {set(refusals)}"
    slowest = max(took for took, _answer in during)
    assert slowest < QUICK_ANSWER, f"an answer during the outage took {slowest:.1f} s"


def _outage_report(title: str, tally: Tally, during: list[tuple[float, str]]) -> str:
    refused = sorted(took for took, answer in during if answer in {"503", "409"})
    p99 = refused[min(len(refused) - 1, int(0.99 * len(refused)))] if refused else 0.0
    return (
        f"\n{title}: {tally.deliveries} deliveries, "
        f"{tally.attempts} attempts ({tally.retries} retries); {len(refused)} answered 503/409 "
        f"during the outages (max {max(refused, default=0):.3f} s, p99 {p99:.3f} s); "
        f"answers {dict(tally.answers)}; kinds {dict(tally.bodies)}"
    )


async def _outages(
    stops: Sequence[Callable[[], object]],
    start: Callable[[], object],
    windows: list[tuple[float, float]],
) -> None:
    """One outage per ``stops``: steady traffic, then the dependency stopped that way for
    OUTAGE_SECONDS (``windows`` records when) and started again; steady traffic at the end."""
    for stop in stops:
        await asyncio.sleep(STEADY_SECONDS)
        began = time.monotonic()
        await asyncio.to_thread(stop)
        await asyncio.sleep(OUTAGE_SECONDS)
        windows.append((began, time.monotonic()))
        await asyncio.to_thread(start)
    await asyncio.sleep(STEADY_SECONDS)


def _shop_through_outages(
    database_url: str,
    log_path: Path,
    stops: Sequence[Callable[[], object]],
    start: Callable[[], object],
    **settings: str,
) -> tuple[Shop, list[tuple[float, float]]]:
    """Customers ordering and paying through ``whatsorder serve`` while a dependency comes
    and goes."""
    asyncio.run(restock(database_url, 100_000))
    windows: list[tuple[float, float]] = []
    with running_server(
        database_url,
        log_path,
        workers=2,
        WHATSORDER_DB_POOL_SIZE="4",
        WHATSORDER_DB_MAX_OVERFLOW="4",
        **provider_secrets(),
        **settings,
    ) as server:

        async def traffic() -> Shop:
            async with Provider(server.base_url, give_up_after=60) as provider:
                shop = Shop(provider)
                down = asyncio.create_task(_outages(stops, start, windows))
                await shop.run(customers=100_000, concurrency=6, seconds=120, enough=down.done)
                await down
                return shop

        shop = asyncio.run(traffic())
    return shop, windows


def _assert_books_match(database_url: str, shop: Shop) -> None:
    assert not shop.expected.wrong_replies, shop.expected.wrong_replies[:3]
    problems = check_books(database_url, shop.expected)
    assert not problems, "\n".join(problems[:20])
    checked = audit(database_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_postgres_stopped_and_restarted_under_load_loses_and_duplicates_nothing(
    private_postgres: PostgresCluster, private_database: str, tmp_path: Path
) -> None:
    """Stopped ``fast`` (every session ended, rolled back) and ``immediate`` (as if it crashed:
    crash recovery on restart), in turn."""
    modes = ["fast", "immediate"] * OUTAGES
    shop, windows = _shop_through_outages(
        private_database,
        tmp_path / "server.log",
        [functools.partial(private_postgres.stop, mode) for mode in modes],
        private_postgres.start,
    )
    tally = shop.provider.tally
    during = _during(tally, windows)
    report(_outage_report(f"PostgreSQL outages ({', '.join(modes)})", tally, during))
    _assert_outage_handled(tally, during)
    _assert_books_match(private_database, shop)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with own_redis() as server:
        yield server


def test_redis_of_the_shared_rate_limits_stopped_under_load_answers_503_and_loses_nothing(
    private_redis: RedisServer, private_database: str, tmp_path: Path
) -> None:
    """With ``WHATSORDER_REDIS_URL`` every worker counts rate limits in Redis; while Redis is
    down the webhooks answer 503 (the provider retries), never 500, and keep nothing."""
    shop, windows = _shop_through_outages(
        private_database,
        tmp_path / "server.log",
        [private_redis.stop] * OUTAGES,
        private_redis.start,
        WHATSORDER_REDIS_URL=private_redis.url,
    )
    tally = shop.provider.tally
    during = _during(tally, windows)
    report(_outage_report(f"Redis outages, rate limits (x{OUTAGES})", tally, during))
    _assert_outage_handled(tally, during)
    _assert_books_match(private_database, shop)


def test_redis_stopped_and_restarted_under_load_in_lease_mode_runs_each_request_once(
    private_redis: RedisServer, private_database: str, tmp_path: Path
) -> None:
    """The middleware's lease mode on Redis: 503 while Redis is down, one effect per key."""
    asyncio.run(
        _execute(
            private_database,
            "CREATE TABLE effects (id bigserial PRIMARY KEY, idempotency_key text NOT NULL)",
        )
    )
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "faults.lease_app:app", "--port", str(port)]
    env = server_env(
        private_database,
        LEASE_REDIS_URL=private_redis.url,
        LEASE_DATABASE_URL=private_database,
    )
    windows: list[tuple[float, float]] = []
    acknowledged: set[str] = set()
    sent: set[str] = set()
    with serving([*command, "--workers", "2"], env, tmp_path / "server.log", port) as server:

        async def traffic() -> Tally:
            async with Provider(server.base_url, give_up_after=60) as provider:
                down = asyncio.create_task(
                    _outages([private_redis.stop] * OUTAGES, private_redis.start, windows)
                )
                gate = asyncio.Semaphore(6)

                async def one() -> None:
                    async with gate:
                        key = "order-" + secrets.token_hex(8)
                        sent.add(key)
                        delivery = Delivery(
                            "lease",
                            key,
                            "/orders",
                            b'{"sku":"ATTA-5KG"}',
                            lambda: {"Idempotency-Key": key, "Content-Type": "application/json"},
                        )
                        if await provider.deliver(delivery) is not None:
                            acknowledged.add(key)

                running = []
                while not down.done():
                    running.append(asyncio.create_task(one()))
                    await asyncio.sleep(0.02)
                await asyncio.gather(*running, down)
                return provider.tally

        tally = asyncio.run(traffic())

    during = _during(tally, windows)
    report(_outage_report("Redis outages (lease mode)", tally, during))
    _assert_outage_handled(tally, during)
    effects = asyncio.run(_effects(private_database))
    assert {key for key, count in effects.items() if count > 1} == set(), "a request ran twice"
    assert acknowledged <= set(effects), "an acknowledged request left no effect"
    assert set(effects) <= sent


@pytest.mark.parametrize("redis", ["refusing", "silent"])
async def test_unreachable_rate_limit_counters_answer_503_within_seconds(
    private_database: str, redis: str
) -> None:
    """Redis for the shared rate limits refuses connections, or accepts and never answers
    (wedged): either way a 503 the provider retries, within seconds, never a 500 or a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if redis == "silent":
            listener.listen(16)  # connections complete in the kernel; nobody ever reads them
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        if redis == "refusing":
            listener.close()
        pairs = inbound_form("ORDER 1 x ATTA-5KG")
        settings = make_settings(private_database, redis_url=url)
        async with app_client(create_app(settings)) as client:
            started = time.monotonic()
            response = await client.post(
                INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
            )
            took = time.monotonic() - started
    assert_problem(response, 503, "rate-limit-store-unavailable")
    assert response.headers["retry-after"]
    assert took < QUICK_ANSWER
    assert await count_rows(private_database, "orders") == 0
