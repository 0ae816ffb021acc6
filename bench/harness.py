"""Servers, databases and Redis keys the suite makes for itself, and takes away again.

Everything runs on 127.0.0.1. PostgreSQL databases are named ``bench_*`` and dropped after
use; Redis keys live in db 15 under this run's prefix and are deleted by that prefix (never
FLUSHALL). Servers are uvicorn processes in their own process groups, stopped by their ids.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
RUN_ID = secrets.token_hex(3)
REDIS_PREFIX = f"bench:{RUN_ID}:"


def server_python() -> str:
    """The bench venv's interpreter when it exists (peers installed there), else this one."""
    bench_python = ROOT / ".venv-bench" / "bin" / "python"
    return str(bench_python) if bench_python.exists() else sys.executable


def raise_open_files_limit() -> None:
    """A storm holds ~1,000 client sockets plus store connections: 1,024 files is too few."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65_536), hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One uvicorn serving ``bench.app`` with some idempotency layer."""

    variant: str
    db_url: str
    store_url: str
    workers: int = 2
    sleep_ms: int = 0
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, folder: Path) -> Server:
        env = dict(os.environ)
        env.update(
            BENCH_VARIANT=self.variant,
            BENCH_DB=self.db_url,
            BENCH_STORE=self.store_url,
            BENCH_PREFIX=REDIS_PREFIX,
            BENCH_SLEEP_MS=str(self.sleep_ms),
            # The engine of this checkout (a worktree's, not the one a venv installed), unless
            # BENCH_ENGINE_SRC names another checkout's to measure (before/after comparisons).
            PYTHONPATH=os.pathsep.join(
                filter(
                    None,
                    [os.environ.get("BENCH_ENGINE_SRC"), str(ROOT / "engine" / "src"), str(ROOT)],
                )
            ),
        )
        self.log_path = folder / f"{self.variant}-{self.port}.log"
        command = [
            server_python(),
            "-m",
            "uvicorn",
            "bench.app:create",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=raise_open_files_limit,
            )  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 60
        ready = 0
        while ready < 3:  # a few answers in a row: most likely every worker is up
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.variant} server exited:\n{self.log()}")
            broken = "Traceback" in self.log() and time.monotonic() > deadline - 50
            if time.monotonic() > deadline or broken:
                last = self.log().strip().splitlines()[-1:] or ["(no output)"]
                raise RuntimeError(f"{self.variant} server did not start: {last[0]}")
            try:
                response = httpx.post(self.base_url + "/orders", json={"sku": "W", "qty": 1})
                ready = ready + 1 if response.status_code < 500 else 0
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(0.5 * self.workers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    @contextlib.contextmanager
    def running(self, folder: Path) -> Iterator[Server]:
        try:
            yield self.start(folder)
        finally:
            self.stop()


# --- databases -------------------------------------------------------------------------------


def pg_url(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def psql(sql: str, database: str | None = None, *, fetch: bool = False) -> list[tuple[str, ...]]:
    """Run SQL with psql (autocommit, one statement per call is safest for CREATE DATABASE)."""
    url = pg_url(database) if database else PG_ADMIN_URL
    result = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-F", "\t", "-c", sql],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()}\n{sql[:300]}")
    if not fetch:
        return []
    return [tuple(line.split("\t")) for line in result.stdout.splitlines() if line]


@contextlib.contextmanager
def pg_database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database ``bench_<name>_<run>``; dropped afterwards."""
    database = f"bench_{name}_{RUN_ID}"
    psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    psql(f"CREATE DATABASE {database}")
    try:
        yield pg_url(database)
    finally:
        psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def drop_stale_pg_databases() -> None:
    """Databases of an earlier run that was killed before it could drop them."""
    for (name,) in psql(
        "SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'", fetch=True
    ):
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def create_orders_table(db_url: str) -> None:
    """The orders table, created before the workers start (so none of them races to)."""
    if db_url.startswith("sqlite"):
        path = db_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS bench_orders (id INTEGER PRIMARY KEY, "
                "sku VARCHAR(64) NOT NULL, qty INTEGER NOT NULL, "
                "created_at DATETIME DEFAULT CURRENT_TIMESTAMP)"
            )
            connection.commit()
    else:
        psql(
            "CREATE TABLE IF NOT EXISTS bench_orders (id SERIAL PRIMARY KEY, "
            "sku VARCHAR(64) NOT NULL, qty INTEGER NOT NULL, "
            "created_at TIMESTAMPTZ DEFAULT now())",
            db_url.rpartition("/")[2],
        )


def count_orders(db_url: str) -> int:
    if db_url.startswith("sqlite"):
        path = db_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as connection:
            return int(connection.execute("SELECT count(*) FROM bench_orders").fetchone()[0])
    rows = psql("SELECT count(*) FROM bench_orders", db_url.rpartition("/")[2], fetch=True)
    return int(rows[0][0])


def reset_orders(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        path = db_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute("DELETE FROM bench_orders")
            connection.commit()
    else:
        psql("TRUNCATE bench_orders", db_url.rpartition("/")[2])


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def delete_redis_keys(prefix: str = REDIS_PREFIX) -> int:
    """Delete this run's keys (by prefix, in batches); nothing else in the db is touched."""
    client = redis_client()
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    client.close()
    return deleted
