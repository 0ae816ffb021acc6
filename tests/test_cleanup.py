"""Cleanup: expired records and long-dead claims go in short batches; nothing else, ever half.

Every test runs on SQLite and PostgreSQL unless it is about PostgreSQL's lock between replicas.
Nothing sleeps through real minutes: the scheduler runs on a clock that goes 1,200 times faster.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from support import server_env, stop_process_group, whatsorder_command
from whatsorder.clock import utcnow
from whatsorder.db import migrate
from whatsorder.db.engine import open_database
from whatsorder.db.tables import idempotency_cleanup_runs, webhook_idempotency
from whatsorder.scheduler import CleanupScheduler, cron_schedule, run_cleanup
from whatsorder.settings import Settings
from whatsorder_idempotency import SqlStore
from whatsorder_idempotency.cleanup import cleanup_lock_key, delete_expired
from whatsorder_idempotency.stores.sql.database import autocommit_options

NOW = datetime(2025, 6, 1, 12, 0, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
LOCK_KEY = cleanup_lock_key(webhook_idempotency.fullname)


def record(
    key: str,
    *,
    status: str = "completed",
    created_at: datetime = NOW - 2 * HOUR,
    locked_until: datetime | None = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """A row as the engine writes it (completed ones with a stored TwiML reply)."""
    completed = status == "completed"
    return {
        "webhook_type": "twilio_inbound",
        "idempotency_key": key,
        "fingerprint": "f" * 64,
        "status": status,
        "epoch": 1,
        "locked_until": locked_until,
        "response_status": 200 if completed else None,
        "response_body": b"<Response/>" if completed else None,
        "response_headers": '[["content-type", "application/xml"]]' if completed else None,
        "created_at": created_at,
        "completed_at": created_at if completed else None,
        "expires_at": expires_at,
    }


def expired(count: int, *, before: datetime = NOW) -> list[dict[str, Any]]:
    """``count`` expired records; the higher the id, the later it expired."""
    first = before - timedelta(seconds=count + 1)
    return [
        record(f"SM-expired-{n:06d}", expires_at=first + timedelta(seconds=n)) for n in range(count)
    ]


async def insert_records(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(webhook_idempotency), rows)


async def keys(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        result = await connection.execute(select(webhook_idempotency.c.idempotency_key))
        return set(result.scalars())


async def count_records(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).select_from(webhook_idempotency)
        return int(await connection.scalar(query) or 0)


async def cleanup_runs(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        query = select(idempotency_cleanup_runs).order_by(idempotency_cleanup_runs.c.id)
        return [dict(row) for row in (await connection.execute(query)).mappings()]


async def wait_for(condition: Callable[[], Awaitable[bool]], *, seconds: float = 10.0) -> None:
    """Poll an async condition until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def cleanup_lock_held_elsewhere(database_url: str) -> AsyncIterator[None]:
    """Another replica's cleanup, as PostgreSQL sees it: its session holds the lock."""
    engine = open_database(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(select(func.pg_try_advisory_lock(LOCK_KEY)))
            await connection.commit()
            yield
            await connection.scalar(select(func.pg_advisory_unlock(LOCK_KEY)))
            await connection.commit()
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------------------------
# What goes and what stays


async def test_cleanup_removes_expired_records_and_dead_claims_and_nothing_else(
    db: AsyncEngine,
) -> None:
    await insert_records(
        db,
        [
            record("expired", expires_at=NOW - timedelta(seconds=1)),
            record("expires-now", expires_at=NOW),
            record("live", expires_at=NOW + timedelta(seconds=1)),
            record("live-lease", status="in_progress", locked_until=NOW + timedelta(seconds=30)),
            record(  # a slow handler whose holder keeps renewing: old, but alive
                "old-claim-live-lease",
                status="in_progress",
                created_at=NOW - 3 * HOUR,
                locked_until=NOW + timedelta(seconds=30),
            ),
            record(  # lease over lately: the next retry takes it over; not cleanup's business
                "lease-lately-over",
                status="in_progress",
                locked_until=NOW - timedelta(minutes=5),
            ),
            record("lease-long-dead", status="in_progress", locked_until=NOW - 2 * HOUR),
            record("released-lately", status="in_progress", created_at=NOW - timedelta(minutes=5)),
            record("released-long-ago", status="in_progress", created_at=NOW - 2 * HOUR),
        ],
    )

    report = await delete_expired(SqlStore(db, webhook_idempotency), now=NOW)

    assert report.outcome == "completed"
    assert (report.rows_deleted, report.stale_removed) == (2, 2)
    assert await keys(db) == {
        "live",
        "live-lease",
        "old-claim-live-lease",
        "lease-lately-over",
        "released-lately",
    }


async def test_batches_are_bounded(db: AsyncEngine) -> None:
    await insert_records(db, expired(35))
    seen: list[int] = []

    report = await delete_expired(
        SqlStore(db, webhook_idempotency), now=NOW, batch_size=10, on_batch=seen.append
    )

    assert seen == [10, 10, 10, 5]
    assert (report.batches, report.rows_deleted, report.outcome) == (4, 35, "completed")
    assert await count_records(db) == 0


async def test_unless_told_batches_are_the_databases_own_size(db: AsyncEngine) -> None:
    """1,000 rows a batch on SQLite (each holds the one write lock), 5,000 on PostgreSQL."""
    await insert_records(db, expired(6000))
    seen: list[int] = []

    await delete_expired(SqlStore(db, webhook_idempotency), now=NOW, on_batch=seen.append)

    expected = [5000, 1000] if db.dialect.name == "postgresql" else [1000] * 6
    assert seen == expected
    assert await count_records(db) == 0


async def test_dry_run_counts_and_deletes_nothing(db: AsyncEngine) -> None:
    await insert_records(
        db,
        [
            *expired(12),
            record("dead", status="in_progress", locked_until=NOW - 2 * HOUR),
            record("live", expires_at=NOW + HOUR),
        ],
    )

    report = await delete_expired(
        SqlStore(db, webhook_idempotency), now=NOW, batch_size=5, dry_run=True
    )

    assert (report.rows_deleted, report.stale_removed, report.batches) == (12, 1, 0)
    assert await count_records(db) == 14


async def test_a_stop_between_batches_leaves_whole_batches_gone_and_the_rest_intact(
    db: AsyncEngine,
) -> None:
    rows = expired(35)
    await insert_records(db, rows)
    stop = asyncio.Event()

    report = await delete_expired(
        SqlStore(db, webhook_idempotency),
        now=NOW,
        batch_size=10,
        stop=stop,
        on_batch=lambda _count: stop.set(),  # SIGTERM arrives during the first batch
    )

    assert (report.outcome, report.batches, report.rows_deleted) == ("stopped", 1, 10)
    assert await keys(db) == {row["idempotency_key"] for row in rows[10:]}  # oldest ten gone


async def test_cleanup_logs_its_completion(
    db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await insert_records(db, expired(3))
    caplog.set_level(logging.INFO, logger="whatsorder_idempotency")

    await delete_expired(SqlStore(db, webhook_idempotency), now=NOW)

    (line,) = [r for r in caplog.records if r.getMessage() == "Idempotency cleanup completed"]
    assert line.levelno == logging.INFO
    assert getattr(line, "rows_deleted") == 3  # noqa: B009 (an extra field)
    assert getattr(line, "seconds") >= 0  # noqa: B009


class Elsewhere:
    """Another client of the database, acting from inside a cleanup's ``on_batch``.

    ``on_batch`` is called between two batches and cannot await; ``run`` does the work on an
    event loop of its own, in a thread, and returns when it is done, so the next batch
    certainly sees it.
    """

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine = open_database(database_url)

    def run(self, work: Awaitable[Any]) -> Any:
        async def awaited() -> Any:
            return await work

        return asyncio.run_coroutine_threadsafe(awaited(), self.loop).result(timeout=30)

    def take_over(self, key: str) -> None:
        """What a retry does to an expired record: it holds it again, with a higher epoch."""

        async def take_over() -> None:
            async with self.engine.begin() as connection:
                await connection.execute(
                    update(webhook_idempotency)
                    .where(webhook_idempotency.c.idempotency_key == key)
                    .values(status="in_progress", epoch=2, locked_until=NOW + timedelta(seconds=30))
                )

        self.run(take_over())

    def hold(self, key: str) -> AsyncConnection:
        """A transaction that holds ``key``'s row locked, as a take-over in progress does."""

        async def hold() -> AsyncConnection:
            connection = await self.engine.connect()
            await connection.begin()
            await connection.execute(
                select(webhook_idempotency.c.id)
                .where(webhook_idempotency.c.idempotency_key == key)
                .with_for_update()
            )
            return connection

        connection: AsyncConnection = self.run(hold())
        return connection

    def let_go(self, connection: AsyncConnection) -> None:
        """The holder rolls back: the row is as it was, still expired."""

        async def let_go() -> None:
            await connection.rollback()
            await connection.close()

        self.run(let_go())

    def close(self) -> None:
        self.run(self.engine.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def elsewhere(database_url: str) -> Iterator[Elsewhere]:
    other = Elsewhere(database_url)
    try:
        yield other
    finally:
        other.close()


async def test_a_record_taken_over_between_batches_stays(
    db: AsyncEngine, elsewhere: Elsewhere
) -> None:
    rows = expired(35)
    await insert_records(db, rows)
    seen: list[int] = []

    def batch_done(count: int) -> None:
        if not seen:  # after the first batch, a retry takes over a record the next one would take
            elsewhere.take_over("SM-expired-000015")
        seen.append(count)

    report = await delete_expired(
        SqlStore(db, webhook_idempotency), now=NOW, batch_size=10, on_batch=batch_done
    )

    assert report.rows_deleted == 34
    assert await keys(db) == {"SM-expired-000015"}


async def test_batches_resume_over_rows_that_share_an_expiry(db: AsyncEngine) -> None:
    # Seven rows a second: batches of ten end in the middle of a second, again and again.
    rows = [
        record(f"SM-{n:03d}", expires_at=NOW - timedelta(seconds=10 - n // 7)) for n in range(35)
    ]
    await insert_records(db, [*rows, record("live", expires_at=NOW + HOUR)])
    seen: list[int] = []

    report = await delete_expired(
        SqlStore(db, webhook_idempotency), now=NOW, batch_size=10, on_batch=seen.append
    )

    assert seen == [10, 10, 10, 5]
    assert report.rows_deleted == 35
    assert await keys(db) == {"live"}


@pytest.mark.postgres
async def test_a_row_a_request_holds_is_skipped_and_deleted_once_let_go(
    postgres_url: str,
) -> None:
    engine = open_database(postgres_url)
    elsewhere = Elsewhere(postgres_url)
    try:
        await insert_records(engine, expired(35))
        holder = elsewhere.hold("SM-expired-000000")  # the oldest: the first batch's first row
        seen: list[int] = []

        def batch_done(count: int) -> None:
            if not seen:  # the take-over gave up: the row is expired as before, and must go
                elsewhere.let_go(holder)
            seen.append(count)

        report = await delete_expired(
            SqlStore(engine, webhook_idempotency), now=NOW, batch_size=10, on_batch=batch_done
        )

        # The run resumed past the row it had skipped, then looked again from the start.
        assert seen == [10, 10, 10, 4, 1]
        assert report.rows_deleted == 35
        assert await count_records(engine) == 0
    finally:
        elsewhere.close()
        await engine.dispose()


@pytest.mark.postgres
async def test_a_row_held_all_along_is_skipped_never_waited_for(postgres_url: str) -> None:
    engine = open_database(postgres_url)
    elsewhere = Elsewhere(postgres_url)
    try:
        await insert_records(engine, expired(35))
        holder = elsewhere.hold("SM-expired-000020")
        try:
            report = await asyncio.wait_for(
                delete_expired(SqlStore(engine, webhook_idempotency), now=NOW, batch_size=10),
                timeout=20,
            )
        finally:
            elsewhere.let_go(holder)
        assert (report.outcome, report.rows_deleted) == ("completed", 34)
        assert await keys(engine) == {"SM-expired-000020"}
    finally:
        elsewhere.close()
        await engine.dispose()


@pytest.mark.postgres
async def test_the_cleaners_session_commits_durably_again_once_back_in_the_pool(
    postgres_url: str,
) -> None:
    # The batches commit without waiting for the WAL flush; the claims that use the same pool
    # afterwards must not.
    engine = open_database(postgres_url, pool_size=1, max_overflow=0)
    try:
        await insert_records(engine, expired(25))
        report = await delete_expired(SqlStore(engine, webhook_idempotency), now=NOW, batch_size=10)
        assert report.rows_deleted == 25
        async with engine.connect() as connection:  # the pool's only session: the cleaner's
            assert await connection.scalar(text("SHOW synchronous_commit")) == "on"
    finally:
        await engine.dispose()


async def test_a_stop_during_a_pause_ends_the_run_at_once(db: AsyncEngine) -> None:
    await insert_records(db, expired(35))
    stop = asyncio.Event()

    def batch_done(_count: int) -> None:
        asyncio.get_running_loop().call_later(0.05, stop.set)  # SIGTERM in the pause

    started = time.monotonic()
    report = await delete_expired(
        SqlStore(db, webhook_idempotency),
        now=NOW,
        batch_size=10,
        pause=100_000,  # a pause of hours after the first batch
        stop=stop,
        on_batch=batch_done,
    )

    assert (report.outcome, report.batches, report.rows_deleted) == ("stopped", 1, 10)
    assert time.monotonic() - started < 10
    assert await count_records(db) == 25


async def test_each_batch_is_followed_by_a_pause_as_long_as_it_took(db: AsyncEngine) -> None:
    await insert_records(db, expired(30))
    moments: list[float] = []

    def slow_delete(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "DELETE" in statement:
            time.sleep(0.05)  # each batch takes at least 50 ms

    event.listen(db.sync_engine, "before_cursor_execute", slow_delete)
    try:
        report = await delete_expired(
            SqlStore(db, webhook_idempotency),
            now=NOW,
            batch_size=10,
            pause=4,
            on_batch=lambda _count: moments.append(time.monotonic()),
        )
    finally:
        event.remove(db.sync_engine, "before_cursor_execute", slow_delete)

    assert report.rows_deleted == 30
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
    assert len(gaps) == 2
    assert all(gap >= 4 * 0.05 + 0.05 for gap in gaps)  # 4 times the last batch, then the next


# --------------------------------------------------------------------------------------------
# One replica at a time (PostgreSQL)


@pytest.mark.postgres
async def test_a_second_cleanup_skips_while_another_replica_holds_the_lock(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = open_database(postgres_url)
    store = SqlStore(engine, webhook_idempotency)
    caplog.set_level(logging.INFO, logger="whatsorder_idempotency")
    try:
        await insert_records(engine, expired(20))
        async with cleanup_lock_held_elsewhere(postgres_url):
            skipped = await delete_expired(store, now=NOW)
        assert skipped.outcome == "skipped"
        assert skipped.rows_deleted == 0
        assert await count_records(engine) == 20
        assert "cleanup skipped: another replica is cleaning" in caplog.messages

        first, again = [await delete_expired(store, now=NOW) for _ in range(2)]  # lock released
        assert (first.outcome, first.rows_deleted) == ("completed", 20)
        assert again.outcome == "completed"
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_two_concurrent_cleanups_do_not_both_run(postgres_url: str) -> None:
    engine = open_database(postgres_url)
    other_replica = open_database(postgres_url)
    try:
        await insert_records(engine, expired(200))
        reports = await asyncio.gather(
            delete_expired(SqlStore(engine, webhook_idempotency), now=NOW, batch_size=1),
            delete_expired(SqlStore(other_replica, webhook_idempotency), now=NOW, batch_size=1),
        )
        assert sorted(report.outcome for report in reports) == ["completed", "skipped"]
        assert sum(report.rows_deleted for report in reports) == 200
    finally:
        await engine.dispose()
        await other_replica.dispose()


# --------------------------------------------------------------------------------------------
# The command line


def cleanup_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        whatsorder_command("cleanup", *args),
        env=server_env(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_cleanup_prints_what_it_deleted_and_records_the_run(
    database_url: str, db: AsyncEngine
) -> None:
    now = utcnow()
    await insert_records(db, [*expired(35, before=now), record("live", expires_at=now + HOUR)])

    done = await asyncio.to_thread(cleanup_command, database_url, "--batch-size", "10")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("batch:")] == [
        "batch: 10 rows deleted, 10 of about 35",
        "batch: 10 rows deleted, 20 of about 35",
        "batch: 10 rows deleted, 30 of about 35",
        "batch: 5 rows deleted, 35 of about 35",
    ]
    assert "cleanup completed: 35 expired rows deleted, 0 stale claims removed in" in lines[-1]
    assert await keys(db) == {"live"}
    (run,) = await cleanup_runs(db)
    assert (run["trigger"], run["outcome"], run["rows_deleted"]) == ("cli", "completed", 35)


async def test_cli_dry_run_deletes_nothing_and_records_nothing(
    database_url: str, db: AsyncEngine
) -> None:
    await insert_records(db, expired(7, before=utcnow()))

    done = await asyncio.to_thread(cleanup_command, database_url, "--dry-run")

    assert done.returncode == 0, done.stderr
    assert "dry run: 7 expired rows and 0 stale claims would be deleted" in done.stdout
    assert await count_records(db) == 7
    assert await cleanup_runs(db) == []


@pytest.mark.postgres
async def test_cli_cleanup_says_it_skipped_while_another_replica_cleans(
    postgres_url: str,
) -> None:
    engine = open_database(postgres_url)
    try:
        await insert_records(engine, expired(5, before=utcnow()))
        async with cleanup_lock_held_elsewhere(postgres_url):
            done = await asyncio.to_thread(cleanup_command, postgres_url)
        assert done.returncode == 0, done.stderr
        assert "cleanup skipped: another replica is cleaning" in done.stdout
        assert await count_records(engine) == 5
        (run,) = await cleanup_runs(engine)
        assert (run["outcome"], run["trigger"]) == ("skipped", "cli")
    finally:
        await engine.dispose()


@pytest.mark.slow
async def test_sigterm_mid_run_stops_after_a_whole_batch_and_exits_cleanly(
    database_url: str, db: AsyncEngine
) -> None:
    total, batch = 50_000, 500
    now = utcnow()
    for start in range(0, total, 10_000):  # bounded inserts, on both backends
        await insert_records(
            db,
            [
                record(f"SM-{n:06d}", expires_at=now - timedelta(seconds=total + 1 - n))
                for n in range(start, start + 10_000)
            ],
        )

    def run_and_interrupt() -> tuple[int, str]:
        process = subprocess.Popen(
            whatsorder_command("cleanup", "--batch-size", str(batch)),
            env=server_env(database_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            seen = b""
            for line in process.stdout:  # ends at the latest when the process does
                seen += line
                if line.startswith(b"batch:"):
                    process.send_signal(signal.SIGTERM)
                    break
            rest, _ = process.communicate(timeout=60)
            return process.returncode, (seen + rest).decode()
        finally:
            stop_process_group(process)

    returncode, output = await asyncio.to_thread(run_and_interrupt)

    assert returncode == 0, output
    assert "cleanup stopped:" in output, output
    remaining = await count_records(db)
    deleted = total - remaining
    assert 0 < deleted < total, output
    assert deleted % batch == 0  # whole batches only
    assert await keys(db) == {f"SM-{n:06d}" for n in range(deleted, total)}  # the oldest went
    (run,) = await cleanup_runs(db)
    assert (run["outcome"], run["rows_deleted"]) == ("stopped", deleted)


# --------------------------------------------------------------------------------------------
# The schedule


class FastClock:
    """Time from ``start`` that passes ``speed`` times faster than real time."""

    def __init__(self, start: datetime, speed: float) -> None:
        self.start = start
        self.speed = speed
        self.began = time.monotonic()

    def __call__(self) -> datetime:
        elapsed = (time.monotonic() - self.began) * self.speed
        return self.start + timedelta(seconds=elapsed)


def test_cron_schedule_names_the_next_minute() -> None:
    every_minute = cron_schedule("* * * * *")
    assert every_minute(NOW) == datetime(2025, 6, 1, 12, 1, tzinfo=UTC)
    assert every_minute(datetime(2025, 6, 1, 12, 1, tzinfo=UTC)) == datetime(
        2025, 6, 1, 12, 2, tzinfo=UTC
    )
    assert cron_schedule("0 * * * *")(NOW) == datetime(2025, 6, 1, 13, tzinfo=UTC)


@pytest.mark.parametrize("schedule", ["every hour", "61 * * * *", "* * * *", "0 0 31 2 *"])
def test_an_invalid_schedule_is_refused_naming_the_setting(schedule: str) -> None:
    with pytest.raises(ValidationError, match="WHATSORDER_CLEANUP_SCHEDULE"):
        Settings(cleanup_schedule=schedule)


async def test_an_empty_schedule_disables_the_scheduler(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'unused.db'}")
    assert CleanupScheduler.from_settings(engine, Settings(cleanup_schedule="")) is None
    assert CleanupScheduler.from_settings(engine, Settings(cleanup_schedule=" ")) is None
    await engine.dispose()


async def test_the_scheduler_runs_every_minute_without_waiting_minutes(db: AsyncEngine) -> None:
    clock = FastClock(NOW, speed=1200)  # a minute every 50 ms
    await insert_records(
        db,
        [
            record("expired", expires_at=NOW - timedelta(seconds=1)),
            record("expires-in-two-minutes", expires_at=NOW + 2 * timedelta(minutes=1)),
            record("live", expires_at=NOW + HOUR),
        ],
    )
    scheduler = CleanupScheduler(db, cron_schedule("* * * * *"), clock=clock, poll_seconds=0.002)
    scheduler.start()
    try:

        async def three_runs() -> bool:
            return len(await cleanup_runs(db)) >= 3

        await wait_for(three_runs)
    finally:
        await scheduler.stop()

    runs = await cleanup_runs(db)
    assert {run["trigger"] for run in runs} == {"schedule"}
    assert {run["outcome"] for run in runs} == {"completed"}
    minutes = [run["started_at"].replace(second=0, microsecond=0) for run in runs]
    assert minutes == sorted(set(minutes))  # one run a minute, each in a minute of its own
    assert sum(run["rows_deleted"] for run in runs) == 2
    assert await keys(db) == {"live"}


async def test_a_failing_run_is_recorded_and_logged_and_the_schedule_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'broken.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = open_database(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE webhook_idempotency"))
        scheduler = CleanupScheduler(
            engine, cron_schedule("* * * * *"), clock=FastClock(NOW, 1200), poll_seconds=0.002
        )
        scheduler.start()
        try:

            async def two_runs() -> bool:
                return len(await cleanup_runs(engine)) >= 2

            await wait_for(two_runs)
        finally:
            await scheduler.stop()
        runs = await cleanup_runs(engine)
        assert {run["outcome"] for run in runs} == {"failed"}
        assert all(run["detail"].startswith("OperationalError") for run in runs)
        assert "Error in idempotency" in caplog.messages
    finally:
        await engine.dispose()


async def test_run_cleanup_records_each_run_with_its_trigger(db: AsyncEngine) -> None:
    await insert_records(db, expired(4, before=utcnow()))

    run = await run_cleanup(db, trigger="cli", batch_size=3)

    assert (run.outcome, run.rows_deleted, run.batches) == ("completed", 4, 2)
    (recorded,) = await cleanup_runs(db)
    assert recorded["trigger"] == "cli"
    assert recorded["finished_at"] >= recorded["started_at"]


def cleanup_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "whatsorder-cleanup"]


async def test_the_app_runs_the_scheduler_for_its_lifetime_and_stops_it_at_once(
    app_factory: Callable[..., FastAPI],
) -> None:
    app = app_factory(cleanup_schedule="* * * * *")
    async with app.router.lifespan_context(app):
        (task,) = cleanup_tasks()
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5  # shutdown never waits for the next minute
    assert task.done()
    assert cleanup_tasks() == []

    disabled = app_factory(cleanup_schedule="")
    async with disabled.router.lifespan_context(disabled):
        assert cleanup_tasks() == []


@pytest.mark.slow
def test_serve_refuses_to_start_with_an_invalid_schedule(tmp_path: Path) -> None:
    done = subprocess.run(
        whatsorder_command("serve", "--port", "1"),
        env=server_env(
            f"sqlite:///{tmp_path / 'unused.db'}", WHATSORDER_CLEANUP_SCHEDULE="every hour"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "WHATSORDER_CLEANUP_SCHEDULE" in done.stdout + done.stderr


async def test_on_sqlite_the_cleaner_checkpoints_the_log_so_no_request_s_commit_does(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """SQLite copies its write-ahead log into the database in the commit that takes the log
    past 1,000 pages, whoever commits: during a cleanup, a request. The cleaner checkpoints
    after each batch, so the log (whose file keeps its largest size) never gets near that."""
    path = tmp_path / "whatsorder.db"
    shutil.copyfile(sqlite_template, path)
    engine = open_database(f"sqlite:///{path}")
    try:
        await insert_records(engine, expired(12_000))
        async with engine.connect() as connection:  # the log emptied, as a day's requests leave it
            await connection.execution_options(**autocommit_options("sqlite"))
            await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        report = await delete_expired(SqlStore(engine, webhook_idempotency), now=NOW)
        # Read while the database is open (closing its last connection removes the log).
        log_pages = os.stat(f"{path}-wal").st_size // 4096
        assert (report.rows_deleted, report.batches) == (12_000, 12)
        assert await count_records(engine) == 0
    finally:
        await engine.dispose()
    assert 0 < log_pages < 500, f"the log grew to {log_pages} pages"
