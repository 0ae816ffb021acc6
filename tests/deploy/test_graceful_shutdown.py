"""SIGTERM to a replica: it stops accepting at once, lets requests in flight finish for up to
``--graceful-timeout`` seconds, and exits; a request still running then is rolled back whole.

A request is held mid-transaction by locking, from outside, the product row it must update.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from support import (
    INBOUND_PATH,
    Server,
    Snapshot,
    encode,
    free_port,
    inbound_form,
    reply_text,
    running_server,
    signed_headers,
    snapshot,
)
from whatsorder.db.engine import open_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


@asynccontextmanager
async def _product_locked(database_url: str, sku: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(_dsn(database_url))
    try:
        await connection.execute("BEGIN")
        await connection.execute("SELECT 1 FROM products WHERE sku = $1 FOR UPDATE", sku)
        yield connection
    finally:
        await connection.close()  # a transaction still open rolls back


async def _until_waiting_on_lock(database_url: str) -> None:
    connection = await asyncpg.connect(_dsn(database_url))
    try:
        deadline = time.monotonic() + 10
        while not await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            assert time.monotonic() < deadline, "the request never reached the lock"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def _until_refused(port: int) -> None:
    """The port stops accepting connections (bounded: 3 s)."""
    deadline = time.monotonic() + 3
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        await asyncio.sleep(0.05)


async def _exit_within(server: Server, seconds: float) -> float:
    started = time.monotonic()
    while server.process.poll() is None:
        assert time.monotonic() - started < seconds, f"still running after {seconds} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _state(database_url: str) -> Snapshot:
    engine = open_database(database_url)
    try:
        return await snapshot(engine)
    finally:
        await engine.dispose()


def _post(server: Server, pairs: list[tuple[str, str]]) -> asyncio.Task[httpx.Response]:
    async def post() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            return await client.post(
                INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
            )

    return asyncio.create_task(post())


def test_sigterm_refuses_new_connections_and_lets_the_request_in_flight_finish(
    postgres_url: str, tmp_path: Path
) -> None:
    pairs = inbound_form("ORDER 2 x RICE-5KG")

    async def drain(server: Server, port: int) -> tuple[httpx.Response, float]:
        async with _product_locked(postgres_url, "RICE-5KG") as lock:
            request = _post(server, pairs)
            await _until_waiting_on_lock(postgres_url)
            os.kill(server.process.pid, signal.SIGTERM)
            await _until_refused(port)
            await asyncio.sleep(0.5)
            assert not request.done(), "the request in flight was cut off"
            assert server.process.poll() is None, "exited with a request in flight"
            await lock.execute("ROLLBACK")  # the request can take its stock now
        response = await request
        return response, await _exit_within(server, 10)

    port = free_port()
    with running_server(
        postgres_url,
        tmp_path / "server.log",
        port=port,
        WHATSORDER_IDEMPOTENCY_WAIT_SECONDS="30",
        WHATSORDER_GRACEFUL_TIMEOUT_SECONDS="20",
    ) as server:
        response, exit_seconds = asyncio.run(drain(server, port))
        assert server.process.returncode in {0, -signal.SIGTERM}
        assert "Application shutdown complete." in server.log()

    assert response.status_code == 200, response.text
    assert "Order ORD-000001 placed" in reply_text(response)
    assert exit_seconds < 5
    state = asyncio.run(_state(postgres_url))
    assert (state.orders, state.ledger_entries, state.idempotency_records) == (1, 1, 1)


def test_a_request_past_the_graceful_timeout_is_cancelled_and_leaves_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    pairs = inbound_form("ORDER 1 x OIL-1L")
    graceful = 2

    async def outlast(server: Server) -> tuple[float, BaseException | httpx.Response]:
        async with _product_locked(postgres_url, "OIL-1L"):
            request = _post(server, pairs)
            await _until_waiting_on_lock(postgres_url)
            os.kill(server.process.pid, signal.SIGTERM)
            # Bounded: the graceful timeout, then the app's own shutdown (a few seconds at most).
            exit_seconds = await _exit_within(server, graceful + 8)
            outcome: BaseException | httpx.Response
            try:
                outcome = await request
            except httpx.HTTPError as error:
                outcome = error
        return exit_seconds, outcome

    with running_server(
        postgres_url,
        tmp_path / "server.log",
        WHATSORDER_IDEMPOTENCY_WAIT_SECONDS="30",
        WHATSORDER_GRACEFUL_TIMEOUT_SECONDS=str(graceful),
    ) as server:
        exit_seconds, outcome = asyncio.run(outlast(server))
        assert "timeout graceful shutdown exceeded" in server.log()

    assert exit_seconds >= graceful
    # No answer, or a 5xx (never stored): either way the provider retries.
    assert not isinstance(outcome, httpx.Response) or outcome.status_code >= 500
    # The cancelled request's transaction rolled back whole: no claim, no retailer, no order,
    # so the provider's retry is processed as new.
    deadline = time.monotonic() + 10
    while (state := asyncio.run(_state(postgres_url))).idempotency_records:
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert (state.orders, state.retailers, state.idempotency_records) == (0, 0, 0)
