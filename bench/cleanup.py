"""How long cleanup takes over a large backlog of expired records, and what it does to claims.

    .venv/bin/python bench/cleanup.py --database-url postgresql://127.0.0.1/bench_cleanup
    .venv/bin/python bench/cleanup.py --database-url sqlite:////tmp/bench_cleanup.db
        [--rows 1000000] [--batch-size N] [--claims-rate 100] [--baseline-seconds 10]

The database should be one of its own: the benchmark creates the table ``bench_cleanup_records``
(dropped first if it is there), adds ``--rows`` expired records (``INSERT … SELECT
generate_series`` on PostgreSQL, a recursive CTE on SQLite), then, while another process claims
and completes fresh keys at ``--claims-rate`` per second through the engine's store (a lease-mode
claim and its completion, latency from each claim's scheduled time), first lets the claims run
``--baseline-seconds`` alone and then times ``delete_expired`` over the backlog. It prints the
backlog's seconds and rows/s, each batch's duration, and the claims' p50/p99 without cleanup and
during it. Bounded: one insert, one cleanup, claims for at most ``MAX_CLAIM_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import multiprocessing
import os
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[1]
# This checkout's engine, or (before/after comparisons) another checkout's: as the suite's servers.
sys.path[:0] = [p for p in (os.environ.get("BENCH_ENGINE_SRC"), str(ROOT / "engine" / "src")) if p]

from whatsorder_idempotency import (  # noqa: E402
    IdempotentRequest,
    SqlStore,
    StoredResponse,
    cleanup,
    idempotency_table,
    sql_engine,
)
from whatsorder_idempotency.cleanup import DEFAULT_BATCH_SIZE, delete_expired  # noqa: E402

default_batch_size = getattr(cleanup, "default_batch_size", lambda _kind: DEFAULT_BATCH_SIZE)

TABLE = "bench_cleanup_records"
MAX_CLAIM_SECONDS = 300.0
SCOPE = "POST /orders"
REPLY = b'<?xml version="1.0" encoding="UTF-8"?><Response><Message>' + b"x" * 120

# Records as the service leaves them: a TwiML reply of ~200 bytes, expired a day ago, in the
# order they were written (expiry grows with the id, a millisecond apart).
INSERT_POSTGRES = """
    INSERT INTO {table} (
        webhook_type, idempotency_key, fingerprint, status, epoch, response_status,
        response_body, response_headers, created_at, completed_at, expires_at
    )
    SELECT 'bench', 'SM' || md5(n::text), md5(n::text) || md5(n::text), 'completed', 1, 200,
        convert_to('<?xml version="1.0" encoding="UTF-8"?><Response><Message>' ||
                   repeat('x', 120) || '</Message></Response>', 'UTF8'),
        '[["content-type", "application/xml"]]',
        now() - interval '2 days' + n * interval '1 millisecond',
        now() - interval '2 days' + n * interval '1 millisecond',
        now() - interval '1 day' + n * interval '1 millisecond'
    FROM generate_series(1, :rows) AS n
"""
# SQLite keeps SQLAlchemy's text form of a timestamp (microseconds, no zone); the same rows.
INSERT_SQLITE = """
    WITH RECURSIVE series(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM series WHERE n < :rows)
    INSERT INTO {table} (
        webhook_type, idempotency_key, fingerprint, status, epoch, response_status,
        response_body, response_headers, created_at, completed_at, expires_at
    )
    SELECT 'bench', printf('SM%032d', n), printf('%064d', n), 'completed', 1, 200,
        CAST('<?xml version="1.0" encoding="UTF-8"?><Response><Message>' ||
             printf('%.120c', 'x') || '</Message></Response>' AS BLOB),
        '[["content-type", "application/xml"]]',
        datetime(:created + n / 1000, 'unixepoch') || printf('.%06d', n % 1000 * 1000),
        datetime(:created + n / 1000, 'unixepoch') || printf('.%06d', n % 1000 * 1000),
        datetime(:expired + n / 1000, 'unixepoch') || printf('.%06d', n % 1000 * 1000)
    FROM series
"""


@dataclass(frozen=True)
class Claims:
    """Latencies (ms) of the claims scheduled in one window."""

    latencies: list[float]
    errors: int

    def line(self, name: str) -> str:
        if not self.latencies:
            return f"claims {name}: none"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"claims {name}: {len(ordered):,}, p50 {statistics.median(ordered):.1f} ms, "
            f"p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms, errors {self.errors}"
        )


async def create_and_load(url: str, table: Table, rows: int) -> None:
    engine = sql_engine(url)
    try:
        await _create_and_load(engine, table, rows)
    finally:
        await engine.dispose()


async def _create_and_load(engine: AsyncEngine, table: Table, rows: int) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(table.drop, checkfirst=True)
        await connection.run_sync(table.create)
    started = time.monotonic()
    now = datetime.now(UTC)
    if engine.dialect.name == "postgresql":
        statement, values = INSERT_POSTGRES, {"rows": rows}
    else:
        created = int((now - timedelta(days=2)).timestamp())
        values = {"rows": rows, "created": created, "expired": created + 86_400}
        statement = INSERT_SQLITE
    async with engine.begin() as connection:
        await connection.execute(text(statement.format(table=TABLE)), values)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(f"VACUUM ANALYZE {TABLE}"))
            # The load's WAL into the tables now, as a day-old backlog's long was: otherwise
            # the checkpoint the load's 200 MB of WAL brings falls in the cleanup's window.
            await connection.execute(text("CHECKPOINT"))
    else:  # the load's WAL into the database now, not during the cleanup
        await engine.dispose()
        path = make_url(str(engine.url)).database or ""
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"inserted {rows:,} expired records in {time.monotonic() - started:.1f} s")


def claim_at_a_fixed_rate(url: str, rate: float, done: Event, results: Any) -> None:
    """In a process of its own: claim and complete fresh keys at ``rate``/s until ``done``."""

    async def run() -> list[tuple[float, float | None]]:
        engine = sql_engine(url)
        store = SqlStore(engine, idempotency_table(MetaData(), TABLE))
        answer = StoredResponse(status=200, body=REPLY, headers=(("content-type", "text/xml"),))
        measured: list[tuple[float, float | None]] = []  # (scheduled, latency or None: error)
        errors: dict[str, int] = {}

        async def one(index: int, scheduled: float) -> None:
            request = IdempotentRequest(
                scope=SCOPE, key=f"claim-{index}", fingerprint="f" * 64, request_body=None
            )
            try:
                now = datetime.now(UTC)
                claimed = await store.claim(request, now, timedelta(seconds=4), timedelta(days=1))
                epoch = getattr(claimed, "epoch", 1)
                await store.complete(request, epoch, answer, datetime.now(UTC), timedelta(days=1))
                measured.append((scheduled, (time.monotonic() - scheduled) * 1000))
            except Exception as error:
                measured.append((scheduled, None))
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1

        tasks = []
        start = time.monotonic() + 0.1
        index = 0
        while not done.is_set() and index < rate * MAX_CLAIM_SECONDS:
            scheduled = start + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            tasks.append(asyncio.create_task(one(index, scheduled)))
            index += 1
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        await engine.dispose()
        if errors:
            print(f"claims failed: {errors}", flush=True)
        return measured

    results.put(asyncio.run(run()))


def window(measured: list[tuple[float, float | None]], start: float, end: float) -> Claims:
    inside = [latency for scheduled, latency in measured if start <= scheduled < end]
    return Claims([x for x in inside if x is not None], sum(x is None for x in inside))


async def clean(
    engine: AsyncEngine, table: Table, batch_size: int | None, pause: float
) -> tuple[Any, list[float]]:
    durations: list[float] = []  # each batch's DELETE statement, ms (pauses left out)

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def started(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "DELETE" in statement:
            connection.info["bench_started"] = time.perf_counter()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def ended(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "DELETE" in statement:
            durations.append((time.perf_counter() - connection.info["bench_started"]) * 1000)

    report = await delete_expired(
        SqlStore(engine, table),
        now=datetime.now(UTC),
        batch_size=batch_size or default_batch_size(engine.dialect.name),
        **({"pause": pause} if "pause" in inspect.signature(delete_expired).parameters else {}),
    )
    return report, durations


def bench(args: argparse.Namespace) -> None:
    table = idempotency_table(MetaData(), TABLE)
    asyncio.run(create_and_load(args.database_url, table, args.rows))

    spawn = multiprocessing.get_context("spawn")
    done, results = spawn.Event(), spawn.Queue()
    claimer = None
    if args.claims_rate > 0:
        claimer = spawn.Process(
            target=claim_at_a_fixed_rate,
            args=(args.database_url, args.claims_rate, done, results),
            daemon=True,
        )
        claimer.start()
        time.sleep(2.0)  # started and warmed up
    baseline_from = time.monotonic()
    time.sleep(args.baseline_seconds if claimer else 0)
    cleanup_from = time.monotonic()
    report, durations = asyncio.run(cleaned(args.database_url, table, args.batch_size, args.pause))
    cleanup_to = time.monotonic()
    measured: list[tuple[float, float | None]] = []
    if claimer is not None:
        done.set()
        measured = results.get(timeout=120)
        claimer.join(timeout=30)
    asyncio.run(drop(args.database_url, table))

    dialect = make_url(args.database_url).get_backend_name()
    batch_size = args.batch_size or default_batch_size(dialect)
    rate = report.rows_deleted / report.seconds if report.seconds else float("inf")
    print(
        f"cleanup {report.outcome}: {report.rows_deleted:,} rows in {report.batches} batches "
        f"(batch size {batch_size:,}, pause {args.pause}): {report.seconds:.2f} s, "
        f"{rate:,.0f} rows/s"
    )
    if durations:
        tenth = max(1, len(durations) // 10)
        ordered = sorted(durations)
        print(
            f"batches: p50 {statistics.median(ordered):.1f} ms, "
            f"p99 {ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]:.1f} ms, "
            f"max {ordered[-1]:.1f} ms; first tenth {statistics.mean(durations[:tenth]):.1f} ms, "
            f"last tenth {statistics.mean(durations[-tenth:]):.1f} ms on average"
        )
    if claimer is not None:
        print(window(measured, baseline_from, cleanup_from).line("without cleanup"))
        print(window(measured, cleanup_from, cleanup_to).line("during cleanup"))


async def cleaned(
    url: str, table: Table, batch_size: int | None, pause: float
) -> tuple[Any, list[float]]:
    engine = sql_engine(url, pool_size=2, max_overflow=0)
    try:
        return await clean(engine, table, batch_size, pause)
    finally:
        await engine.dispose()


async def drop(url: str, table: Table) -> None:
    engine = sql_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(table.drop, checkfirst=True)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="postgresql:// or sqlite:///")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, help="default: the engine's for the database")
    parser.add_argument(
        "--pause",
        type=float,
        default=getattr(cleanup, "DEFAULT_PAUSE", 0.0),
        help="after each batch, times its duration",
    )
    parser.add_argument("--claims-rate", type=float, default=100.0, help="0: no claims")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    args = parser.parse_args()
    if make_url(args.database_url).get_backend_name() not in ("postgresql", "sqlite"):
        parser.error("--database-url must be a postgresql:// or sqlite:/// URL")
    bench(args)


if __name__ == "__main__":
    main()
