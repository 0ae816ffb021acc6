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
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from conftest import make_settings
from faults.books import audit, check_books, restock
from faults.harness import provider_secrets, serving
from faults.modes import scaled
from faults.pg_cluster import PostgresCluster
from faults.provider import TWILIO_TIMEOUT, Delivery, Provider, Shop, Tally
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
from whatsorder.db.tables import webhook_idempotency
from whatsorder.idempotency import (
    HandlerResult,
    IdempotencyEngine,
    IdempotentRequest,
    RequestInFlight,
    SqlStore,
    create_engine,
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
    orders = await _count(private_database, "orders")
    assert orders == 0


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


async def _count(database_url: str, table: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    finally:
        await connection.close()


async def test_a_database_out_of_connections_answers_503_and_keeps_nothing(
    private_postgres: PostgresCluster, private_database: str
) -> None:
    """ "Too many connections" (SQLSTATE 53300) is the database being busy: 503, never 500."""
    database = private_database.rsplit("/", 1)[1]
    for statement in (
        "CREATE ROLE shop LOGIN",
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO shop",
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO shop",
        f'ALTER DATABASE "{database}" CONNECTION LIMIT 1',
    ):
        await private_postgres.execute(statement, database)
    shop_url = private_database.replace("postgres@", "shop@")
    held = await asyncpg.connect(shop_url)  # the one connection the database allows
    try:
        pairs = inbound_form("ORDER 1 x ATTA-5KG")
        async with app_client(create_app(make_settings(shop_url))) as client:
            response = await client.post(
                INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
            )
        assert_problem(response, 503, "store-busy")
    finally:
        await held.close()
    assert await _count(private_database, "orders") == 0


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
    print(_outage_report(f"PostgreSQL outages ({', '.join(modes)})", tally, during))
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
    print(_outage_report(f"Redis outages, rate limits (x{OUTAGES})", tally, during))
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
    print(_outage_report("Redis outages (lease mode)", tally, during))
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
    assert await _count(private_database, "orders") == 0


async def test_time_spent_waiting_for_a_connection_comes_out_of_the_in_flight_wait(
    private_database: str,
) -> None:
    """A duplicate that waited for a pooled connection has only the rest of its in-flight wait
    left for the first copy's lock: the two waits never add up past the provider's patience."""
    wait = timedelta(seconds=3)
    engine = create_engine(private_database, pool_size=1, max_overflow=0, pool_timeout=10)
    store = SqlStore(engine, webhook_idempotency, in_flight_wait=wait)
    idempotency = IdempotencyEngine[AsyncConnection](store)
    request = IdempotentRequest("twilio_inbound", "SM-held-elsewhere", "f" * 64)
    first_copy = await asyncpg.connect(private_database)  # holds the claim, uncommitted
    await first_copy.execute("BEGIN")
    await first_copy.execute(
        "INSERT INTO webhook_idempotency (webhook_type, idempotency_key, fingerprint, status,"
        " epoch, locked_until, created_at) VALUES ($1, $2, $3, 'in_progress', 1, now(), now())",
        request.scope,
        request.key,
        request.fingerprint,
    )

    async def busy_pool() -> None:  # the pool's only connection, busy for 2.5 s
        async with store.transaction():
            await asyncio.sleep(2.5)

    async def never_runs(_connection: AsyncConnection) -> HandlerResult:
        raise AssertionError("the duplicate must not run")

    try:
        holder = asyncio.create_task(busy_pool())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(RequestInFlight):
            await idempotency.execute(request, never_runs)
        took = time.monotonic() - started
        await holder
    finally:
        await first_copy.execute("ROLLBACK")
        await first_copy.close()
        await engine.dispose()
    assert 2.4 < took < wait.total_seconds() + 0.5, f"answered after {took:.2f} s"


STORM = 1000
RETRIED_COPIES = 50


def _raw_request(port: int, delivery: Delivery) -> bytes:
    """The request's bytes, signed once: every copy of a Twilio retry is byte-identical."""
    headers = {
        "Host": f"127.0.0.1:{port}",
        **delivery.sign(),
        "Content-Length": str(len(delivery.body)),
        "Connection": "close",
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {delivery.path} HTTP/1.1\r\n{head}\r\n".encode() + delivery.body


async def _raw_attempt(port: int, request: bytes) -> tuple[str, float]:
    """One copy over its own connection: its status (or why none came), and how long it took.

    Raw sockets, not httpx: a thousand httpx requests cost the client seconds of CPU on this
    machine, which would be counted against the server."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(TWILIO_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError:
        return "timeout", time.monotonic() - started
    except OSError:
        return "connection", time.monotonic() - started
    parts = status_line.split()
    return (parts[1].decode() if len(parts) > 1 else "closed"), time.monotonic() - started


async def _hold_stock_lock(database_url: str, sku: str) -> asyncpg.Connection:
    """Lock a product row from outside: the order taking that stock stalls mid-transaction,
    holding its claim (and its pooled connection) while every copy of it piles up behind."""
    connection = await asyncpg.connect(database_url)
    await connection.execute("BEGIN")
    await connection.execute("SELECT 1 FROM products WHERE sku = $1 FOR UPDATE", sku)
    return connection


def test_a_thousand_duplicates_exhausting_the_pool_get_409_or_503_fast_then_one_order(
    private_database: str, tmp_path: Path
) -> None:
    """1,000 copies of one message at once against 2 workers with 2 connections each, while
    the first copy is stalled: each copy is answered (409 or 503) before Twilio's 15 s are up,
    none left to time out; once the first copy finishes, every retry replays its order."""
    pairs = inbound_form("ORDER 2 x RICE-5KG")
    delivery = Delivery(
        "twilio", "storm", INBOUND_PATH, encode(pairs), lambda: signed_headers(INBOUND_PATH, pairs)
    )
    port = free_port()
    with running_server(
        private_database,
        tmp_path / "server.log",
        workers=2,
        port=port,
        WHATSORDER_DB_POOL_SIZE="2",
        WHATSORDER_DB_MAX_OVERFLOW="0",
        **provider_secrets(),
    ) as server:

        async def storm() -> tuple[list[tuple[str, float]], Tally]:
            lock = await _hold_stock_lock(private_database, "RICE-5KG")
            try:
                request = _raw_request(port, delivery)
                answers = await asyncio.gather(*(_raw_attempt(port, request) for _ in range(STORM)))
            finally:
                await lock.execute("ROLLBACK")
                await lock.close()
            async with Provider(server.base_url, connections=50) as retrier:
                gate = asyncio.Semaphore(50)

                async def retry() -> None:
                    async with gate:
                        assert await retrier.deliver(delivery) is not None

                # The provider retries what it did not get a 200 for (a sample: one message).
                refused = [status for status, _took in answers if status != "200"]
                await asyncio.gather(*(retry() for _ in refused[:RETRIED_COPIES]))
                return answers, retrier.tally

        answers, retries = asyncio.run(storm())

    statuses = Counter(status for status, _took in answers)
    took = sorted(seconds for _status, seconds in answers)
    print(
        f"\n{STORM} duplicates, pool exhausted: {dict(statuses)}; answered in p50 "
        f"{took[len(took) // 2]:.1f} s, p99 {took[int(0.99 * len(took))]:.1f} s, "
        f"max {took[-1]:.1f} s; the retries: {dict(retries.answers)}"
    )
    assert set(statuses) <= {"200", "409", "503"}, statuses
    assert asyncio.run(_count(private_database, "orders")) == 1
