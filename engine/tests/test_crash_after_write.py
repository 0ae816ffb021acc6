"""SIGKILL after the handler's write, through the front door of a real server, on SQLite and
PostgreSQL: the transactional middleware makes one order, never two, and never none.

Two uvicorn processes serve ``crash_app`` on one database, as two replicas would. The first
copy of a request kills its server at the chosen point; the client's retry goes to the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from served import ServedApp, served
from whatsorder_idempotency.stores.sql.database import async_url

pytestmark = pytest.mark.slow
PROMISE = 5.0  # seconds from the kill to the retry's answer: a dead lease is taken over by then


@contextmanager
def two_servers(env: dict[str, str], folder: Path) -> Iterator[tuple[ServedApp, ServedApp]]:
    """Two replicas of ``crash_app`` on one database."""
    with (
        served("crash_app:app", env, folder / "first.log", health_path="/healthz") as first,
        served("crash_app:app", env, folder / "second.log", health_path="/healthz") as second,
    ):
        yield first, second


def orders_of(url: str, key: str) -> list[tuple[int, int]]:
    async def read() -> list[tuple[int, int]]:
        engine = create_async_engine(async_url(url))
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    text("SELECT id, pid FROM orders WHERE idempotency_key = :key"),
                    {"key": f'"{key}"'},  # the header as sent
                )
                return [(int(row.id), int(row.pid)) for row in rows]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def send_in_background(base: str, key: str, crash: str) -> threading.Thread:
    def send() -> None:
        with contextlib.suppress(httpx.TransportError):  # the server died under it
            httpx.post(
                f"{base}/orders",
                json={"sku": "ATTA-5KG"},
                headers={"Idempotency-Key": f'"{key}"', "X-Crash": crash},
                timeout=60,
            )

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def retry_until_answered(base: str, key: str, patience: float) -> httpx.Response:
    """The client's retry: again on 409 (still in flight) until ``patience`` runs out."""
    deadline = time.monotonic() + patience
    while True:
        answer = httpx.post(
            f"{base}/orders",
            json={"sku": "ATTA-5KG"},
            headers={"Idempotency-Key": f'"{key}"'},
            timeout=30,
        )
        if answer.status_code != 409 or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_a_kill_after_the_write_leaves_no_order_and_the_retry_makes_exactly_one(
    sql_url: str, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    env = {"CRASH_STORE_URL": sql_url, "CRASH_MARKS": str(tmp_path)}
    key = "order-after-write"
    with two_servers(env, tmp_path) as (first, second):
        sending = send_in_background(first.url, key, "after-write")
        deadline = time.monotonic() + 20
        while not (tmp_path / "written").exists():
            assert time.monotonic() < deadline, f"no order written:\n{first.log_tail()}"
            time.sleep(0.02)
        killed_at = first.kill()
        sending.join(timeout=10)
        answer = retry_until_answered(second.url, key, patience=30)
        taken_over_after = time.monotonic() - killed_at
        replay = retry_until_answered(second.url, key, patience=5)
    assert answer.status_code == 201, answer.text
    assert "idempotent-replayed" not in answer.headers  # it ran: nothing had been committed
    assert orders_of(sql_url, key) == [(answer.json()["id"], second.process.pid)]
    assert replay.json() == answer.json()
    assert replay.headers["idempotent-replayed"] == "true"
    record_property("kill after the write: retry answered (s)", round(taken_over_after, 2))
    assert taken_over_after <= PROMISE, f"the retry was answered {taken_over_after:.2f} s late"


def test_a_kill_after_the_commit_replays_the_one_order(sql_url: str, tmp_path: Path) -> None:
    env = {"CRASH_STORE_URL": sql_url, "CRASH_MARKS": str(tmp_path)}
    key = "order-after-commit"
    with two_servers(env, tmp_path) as (first, second):
        send_in_background(first.url, key, "after-commit").join(timeout=30)
        assert first.process.wait(timeout=10) == -signal.SIGKILL
        answer = retry_until_answered(second.url, key, patience=10)
    assert answer.status_code == 201, answer.text
    assert answer.headers["idempotent-replayed"] == "true"
    assert orders_of(sql_url, key) == [(answer.json()["id"], first.process.pid)]
