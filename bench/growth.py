"""Large tables: replay and claim latency as records pile up, bytes per record, and cleanup.

Records are bulk-loaded in the store's own table (``INSERT … SELECT generate_series`` on
PostgreSQL, a recursive CTE on SQLite, a Lua loop on Redis), each a completed record exactly
like the middleware writes for ``POST /orders``: same scope, fingerprint, response and headers,
a 36-character key. Keys are loaded in order (so the load is fast); replays then ask for keys at
random, so lookups land all over the index as they would in production.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from bench import harness, load
from bench.contenders import GROUPS, OURS
from bench.context import Context
from whatsorder_idempotency import fingerprint, idempotency_table

TABLE = "idempotency_records"
SCOPE = "POST /orders"
KEY_PREFIX = "g"  # keys g000…0001 to g000…N (36 characters, like a UUID)
FINGERPRINT = fingerprint("POST", "/orders", load.BODY, "application/json")
HEADERS = '[["content-type", "application/json"]]'
LOAD_CHUNK = 1_000_000


def measure(ctx: Context, stores: list[str]) -> None:
    section: dict[str, Any] = ctx.results.setdefault("growth", {})
    s = ctx.settings
    for name in stores:
        group = GROUPS[name]
        sizes = s.redis_growth_sizes if name == "redis" else s.growth_sizes
        data: dict[str, Any] = {"levels": {}}
        with ctx.databases(group, "growth") as (db_url, store_url):
            loader = _Loader(name, store_url)
            loader.create_table()
            server = harness.Server(OURS, db_url, store_url, workers=s.workers)
            with server.running(ctx.folder):
                loaded = 0
                for size in sizes:
                    started = time.monotonic()
                    loader.load(loaded + 1, size)
                    load_seconds = time.monotonic() - started
                    loaded = size
                    ctx.log(f"{name:8} growth: {size:,} records loaded in {load_seconds:.1f} s")
                    level = _latencies(ctx, server, size)
                    level["load_seconds"] = round(load_seconds, 1)
                    data["levels"][str(size)] = level
                    if size <= 1_000_000 or "bytes_per_record" not in data:
                        data["bytes_per_record"] = round(loader.bytes_per_record(), 1)
                        data["storage_rows"] = loader.rows()
                    ctx.log(
                        f"{name:8} growth at {size:,}: replay p50 {level['replay']['p50_ms']:.2f}"
                        f" ms, claim p50 {level['claim']['p50_ms']:.2f} ms, "
                        f"{data['bytes_per_record']:.0f} B/record"
                    )
            loader.drop()
        section[name] = data


def _latencies(ctx: Context, server: harness.Server, size: int) -> dict[str, Any]:
    s = ctx.settings
    seconds = s.growth_seconds
    load.wrk(server.base_url, mode="padded", prefix=KEY_PREFIX, pool=size, seconds=1, connections=4)
    replay = load.wrk(
        server.base_url,
        mode="padded",
        prefix=KEY_PREFIX,
        pool=size,
        seconds=seconds,
        connections=4,
    )
    claim = load.wrk(
        server.base_url,
        mode="fresh",
        prefix=f"c{harness.RUN_ID}{size}-",
        seconds=seconds,
        connections=4,
    )
    return {"replay": replay.as_dict(), "claim": claim.as_dict()}


class _Loader:
    """Bulk-loads and sizes the records of one store."""

    def __init__(self, store: str, url: str) -> None:
        self.store = store
        self.url = url
        self.table = idempotency_table(MetaData(), TABLE)
        self.redis_prefix = harness.REDIS_PREFIX + "wo:"

    def create_table(self) -> None:
        if self.store == "redis":
            return
        dialect = postgresql.dialect() if self.store == "postgres" else sqlite.dialect()
        statements = [str(CreateTable(self.table).compile(dialect=dialect))]
        statements += [
            str(CreateIndex(index).compile(dialect=dialect)) for index in self.table.indexes
        ]
        for statement in statements:
            self._execute(statement)

    def load(self, first: int, last: int, *, expired: bool = False) -> None:
        """Records ``first`` … ``last`` (completed; already expired when ``expired``)."""
        now = datetime.now(UTC)
        expires = now + (timedelta(days=-1) if expired else timedelta(days=1))
        for start in range(first, last + 1, LOAD_CHUNK):
            end = min(last, start + LOAD_CHUNK - 1)
            if self.store == "postgres":
                self._load_postgres(start, end, now, expires)
            elif self.store == "sqlite":
                self._load_sqlite(start, end, now, expires)
            else:
                self._load_redis(start, end, now, expires)
        if self.store == "postgres":
            self._execute(f"ANALYZE {TABLE}")

    def _load_postgres(self, first: int, last: int, now: datetime, expires: datetime) -> None:
        self._execute(
            f"""
            INSERT INTO {TABLE} (webhook_type, idempotency_key, fingerprint, status, epoch,
                response_status, response_body, response_headers, source_ip, created_at,
                completed_at, expires_at)
            SELECT '{SCOPE}', '{KEY_PREFIX}' || lpad(n::text, 35, '0'), '{FINGERPRINT}',
                'completed', 1, 201,
                convert_to('{{"id":' || n || ',"sku":"ATTA-5KG","qty":2}}', 'UTF8'),
                '{HEADERS}', '127.0.0.1', '{now.isoformat()}', '{now.isoformat()}',
                '{expires.isoformat()}'::timestamptz + n * interval '1 microsecond'
            FROM generate_series({first}, {last}) AS n
            """  # noqa: S608 (the suite's own constants, no outside input)
        )

    def _load_sqlite(self, first: int, last: int, now: datetime, expires: datetime) -> None:
        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        until = expires.strftime("%Y-%m-%d %H:%M:%S.%f")
        self._execute(
            f"""
            WITH RECURSIVE series(n) AS (SELECT {first} UNION ALL
                SELECT n + 1 FROM series WHERE n < {last})
            INSERT INTO {TABLE} (webhook_type, idempotency_key, fingerprint, status, epoch,
                response_status, response_body, response_headers, source_ip, created_at,
                completed_at, expires_at)
            SELECT '{SCOPE}', '{KEY_PREFIX}' || printf('%035d', n), '{FINGERPRINT}',
                'completed', 1, 201,
                CAST('{{"id":' || n || ',"sku":"ATTA-5KG","qty":2}}' AS BLOB),
                '{HEADERS}', '127.0.0.1', '{stamp}', '{stamp}', '{until}'
            FROM series
            """  # noqa: S608 (the suite's own constants, no outside input)
        )

    def _load_redis(self, first: int, last: int, now: datetime, expires: datetime) -> None:
        client = harness.redis_client()
        micros = int(now.timestamp() * 1_000_000)
        until = int(expires.timestamp() * 1_000_000)
        ttl_ms = max(1, int((expires - now).total_seconds() * 1000))
        scope = f"{len(SCOPE.encode())}:{SCOPE}:"
        script = client.register_script(_REDIS_LOAD)
        for start in range(first, last + 1, 5_000):
            end = min(last, start + 4_999)
            script(
                keys=[self.redis_prefix + scope + KEY_PREFIX],
                args=[start, end, FINGERPRINT, micros, until, ttl_ms, HEADERS],
            )
        client.close()

    def rows(self) -> int:
        if self.store == "redis":
            return int(self._redis_count())
        return int(self._query(f"SELECT count(*) FROM {TABLE}")[0][0])  # noqa: S608

    def bytes_per_record(self) -> float:
        if self.store == "postgres":
            total = int(self._query(f"SELECT pg_total_relation_size('{TABLE}')")[0][0])
            return total / max(1, self.rows())
        if self.store == "sqlite":
            total = int(
                self._query(
                    "SELECT sum(pgsize) FROM dbstat WHERE name IN (SELECT name FROM "  # noqa: S608
                    f"sqlite_master WHERE tbl_name = '{TABLE}')"
                )[0][0]
            )
            return total / max(1, self.rows())
        client = harness.redis_client()
        sizes = [
            client.memory_usage(key, samples=0) or 0
            for key in list(client.scan_iter(match=self.redis_prefix + "*", count=1000))[:1000]
        ]
        client.close()
        return sum(sizes) / max(1, len(sizes))

    def _redis_count(self) -> int:
        client = harness.redis_client()
        count = sum(1 for _ in client.scan_iter(match=self.redis_prefix + "*", count=10_000))
        client.close()
        return count

    def settle(self) -> None:
        """As a backlog a day old would be: vacuumed, and its WAL long checkpointed into the
        tables (else the checkpoint that the load's WAL brings falls inside the cleanup)."""
        if self.store == "postgres":
            self._execute(f"VACUUM ANALYZE {TABLE}")
            self._execute("CHECKPOINT")
        elif self.store == "sqlite":
            self._execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def drop(self) -> None:
        if self.store == "redis":
            harness.delete_redis_keys(self.redis_prefix)

    def _execute(self, sql: str) -> None:
        if self.store == "postgres":
            harness.psql(sql, self.url.rpartition("/")[2])
        else:
            with self._sqlite() as connection:
                connection.execute(sql)
                connection.commit()

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.store == "postgres":
            return list(harness.psql(sql, self.url.rpartition("/")[2], fetch=True))
        with self._sqlite() as connection:
            return list(connection.execute(sql).fetchall())

    @contextlib.contextmanager
    def _sqlite(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite:///"))) as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA busy_timeout=30000")
            yield c


_REDIS_LOAD = """
local fingerprint, now, expires_at, ttl, headers = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
for n = tonumber(ARGV[1]), tonumber(ARGV[2]) do
    local key = KEYS[1] .. string.format('%035d', n)
    redis.call('HSET', key, 'fingerprint', fingerprint, 'status', 'completed', 'epoch', 1,
        'created_at_us', now, 'completed_at_us', now, 'expires_at_us', expires_at,
        'response_status', 201, 'response_body', '{"id":' .. n .. ',"sku":"ATTA-5KG","qty":2}',
        'response_headers', headers, 'source_ip', '127.0.0.1')
    redis.call('PEXPIRE', key, ttl)
end
return 1
"""


def cleanup(ctx: Context, stores: list[str]) -> None:
    """Delete a backlog of expired records while claims arrive at a fixed rate."""
    section: dict[str, Any] = ctx.results.setdefault("cleanup", {})
    for name in stores:
        with ctx.databases(GROUPS[name], "cleanup") as (db_url, store_url):
            section[name] = _cleanup_under_load(ctx, name, db_url, store_url)


def _clean(store_url: str | None) -> Any:
    """One cleanup run, in the process it is submitted to; its report. None: only the imports."""
    from whatsorder_idempotency import SqlStore, sql_engine
    from whatsorder_idempotency.cleanup import delete_expired

    if store_url is None:
        return None

    async def clean() -> Any:
        engine = sql_engine(store_url, pool_size=2, max_overflow=0)
        try:
            store = SqlStore(engine, idempotency_table(MetaData(), TABLE))
            return await delete_expired(store, now=datetime.now(UTC))
        finally:
            await engine.dispose()

    return asyncio.run(clean())


def _cleanup_under_load(ctx: Context, name: str, db_url: str, store_url: str) -> dict[str, Any]:
    from whatsorder_idempotency import cleanup as cleanup_module
    from whatsorder_idempotency.cleanup import DEFAULT_BATCH_SIZE

    batch_size = getattr(cleanup_module, "default_batch_size", lambda _kind: DEFAULT_BATCH_SIZE)(
        "postgresql" if name == "postgres" else name
    )

    s = ctx.settings
    loader = _Loader(name, store_url)
    loader.create_table()
    started = time.monotonic()
    loader.load(1, s.cleanup_rows, expired=True)
    loader.settle()
    ctx.log(f"{name:8} cleanup: {s.cleanup_rows:,} expired records loaded "
            f"in {time.monotonic() - started:.1f} s")  # fmt: skip
    report: dict[str, Any] = {}

    async def claims_without_then_during_cleanup(
        port: int, cleaner: concurrent.futures.ProcessPoolExecutor
    ) -> tuple[load.Figures, load.Figures]:
        # The same claims on the same server and table, first with no cleanup running: the
        # yardstick for the claims' latency during it (after a warm-up that is not counted).
        await load.constant_rate(
            port,
            rate=s.cleanup_rate,
            seconds=2 * s.warmup,
            prefix=f"w{harness.RUN_ID}-",
            duplicate_share=0.0,
        )
        without = await load.constant_rate(
            port,
            rate=s.cleanup_rate,
            seconds=s.cleanup_baseline_seconds,
            prefix=f"b{harness.RUN_ID}-",
            duplicate_share=0.0,
        )
        stop = asyncio.Event()
        claims = asyncio.create_task(
            load.constant_rate(
                port,
                rate=s.cleanup_rate,
                seconds=1.0,
                prefix=f"k{harness.RUN_ID}-",
                duplicate_share=0.0,
                stop=stop,
            )
        )
        await asyncio.sleep(0.5)
        report["result"] = await asyncio.wrap_future(cleaner.submit(_clean, store_url))
        stop.set()
        return without, await claims

    # The cleaner is a process of its own, as a replica's scheduler would be (in a thread here
    # it would share the load generator's GIL), started and warmed before the claims begin.
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn")
    ) as cleaner:
        cleaner.submit(_clean, None).result()
        server = harness.Server(OURS, db_url, store_url, workers=s.workers)
        with server.running(ctx.folder):
            without, figures = asyncio.run(claims_without_then_during_cleanup(server.port, cleaner))
    result = report["result"]
    ctx.log(
        f"{name:8} cleanup: {result.rows_deleted:,} rows in {result.seconds:.1f} s; "
        f"claims p99 {figures.p99_ms:.1f} ms (without cleanup {without.p99_ms:.1f} ms)"
    )
    return {
        "rows": result.rows_deleted,
        "batches": result.batches,
        "batch_size": batch_size,
        "pause": getattr(cleanup_module, "DEFAULT_PAUSE", 0.0),
        "seconds": round(result.seconds, 2),
        "claims": figures.as_dict(),
        "claims_without_cleanup": without.as_dict(),
    }
