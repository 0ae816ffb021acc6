"""What every scenario is given: the settings of this run and a place for scratch files."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import harness
from bench.contenders import Group


@dataclass
class Settings:
    """Durations and sizes; ``--smoke`` shrinks every one of them."""

    seconds: float = 6.0  # one wrk run
    warmup: float = 1.0
    rounds: int = 2  # interleaved rounds of every contender (drift hits all alike)
    connections: int = 16
    workers: int = 2
    rate: float = 100.0  # mixed traffic, requests per second
    mixed_seconds: float = 8.0
    storm_copies: int = 1000
    storm_workers: int = 4
    storm_sleep_ms: int = 200
    replay_keys: int = 200
    growth_sizes: tuple[int, ...] = (10_000, 1_000_000, 10_000_000)
    redis_growth_sizes: tuple[int, ...] = (10_000, 1_000_000)
    growth_seconds: float = 5.0
    cleanup_rows: int = 1_000_000
    cleanup_rate: float = 100.0
    cleanup_baseline_seconds: float = 10.0  # the same claims first, with no cleanup running
    console_orders: int = 100_000
    console_records: int = 1_000_000
    console_requests: int = 30  # per page
    console_page_seconds: float = 30.0  # a page's requests stop early after this long

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            seconds=1.0,
            warmup=0.5,
            rounds=1,
            rate=50.0,
            mixed_seconds=2.0,
            storm_copies=100,
            replay_keys=20,
            growth_sizes=(1_000, 20_000),
            redis_growth_sizes=(1_000, 20_000),
            growth_seconds=1.0,
            cleanup_rows=20_000,
            cleanup_rate=50.0,
            cleanup_baseline_seconds=2.0,
            console_orders=5_000,
            console_records=50_000,
            console_requests=5,
            console_page_seconds=5.0,
        )


@dataclass
class Context:
    settings: Settings
    folder: Path
    with_peers: bool
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    @contextlib.contextmanager
    def databases(self, group: Group, name: str) -> Iterator[tuple[str, str]]:
        """(orders database URL, store URL) for one scenario of ``group``, made fresh."""
        with contextlib.ExitStack() as stack:
            if group.database == "sqlite":
                path = self.folder / f"{name}-{group.name}.db"
                db_url = f"sqlite:///{path}"
            else:
                db_url = stack.enter_context(harness.pg_database(f"{name}_{group.name}"))
            harness.create_orders_table(db_url)
            store_url = harness.REDIS_URL if group.store == "redis" else db_url
            try:
                yield db_url, store_url
            finally:
                if group.database == "sqlite":
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
