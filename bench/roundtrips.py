"""Store round trips per request, counted where they really happen.

PostgreSQL: on the wire. The store connects through a relay on 127.0.0.1
(``engine/tests/pg_wire.py``, the engine's own tests use it too) that counts each time the
client waits for the server: a Sync of the extended protocol or a simple Query. That sees
every statement however it is sent (the replay's read goes to asyncpg directly, which
SQLAlchemy's events never see), BEGIN and COMMIT included; the pool's pre-ping is counted too.
SQLite, where nothing travels: statements, counted by SQLAlchemy's engine events
(``before_cursor_execute``, COMMIT) and by sqlite3's trace callback on the store's own
connections (reads, a lease's claim and completion). Redis: the server's own MONITOR stream,
filtered to the store's connection between two ECHO markers.

The middleware runs in process (httpx's ASGI transport) in front of the same endpoint shape the
HTTP scenarios use, so the counts are the middleware's and nothing else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
from sqlalchemy import MetaData, event

from bench import harness
from bench.contenders import GROUPS, OURS_TX
from bench.context import Context
from whatsorder_idempotency.stores.sql import AUTOCOMMIT_OPTION as AUTOCOMMIT

# The engine's tests own the relay (they run where only the engine is installed).
sys.path.insert(0, str(harness.ROOT / "engine" / "tests"))
from pg_wire import Wire, counting_relay


def measure(ctx: Context, stores: list[str]) -> None:
    section: dict[str, Any] = ctx.results.setdefault("roundtrips", {})
    for name in stores:
        group = GROUPS[name]
        with ctx.databases(group, "trips") as (_db_url, store_url):
            section[name] = asyncio.run(_count(store_url))
            ctx.log(f"{name:8} round trips: {section[name]}")
            if OURS_TX in group.ours():
                section[f"{name}, one transaction"] = asyncio.run(_count_transactional(store_url))


def _app(store: Any) -> Any:
    from fastapi import FastAPI

    from whatsorder_idempotency import IdempotencyMiddleware

    app = FastAPI()

    @app.post("/orders", status_code=201)
    async def create_order(order: dict[str, Any]) -> dict[str, Any]:
        return {"id": 1, **order}

    app.add_middleware(IdempotencyMiddleware, store=store)
    return app


def _sql_store(url: str) -> Any:
    from whatsorder_idempotency import SqlStore, idempotency_table, sql_engine

    return SqlStore(
        sql_engine(url, pool_size=1, max_overflow=0),
        idempotency_table(MetaData(), "idempotency_records"),
        create_table=True,
    )


@contextlib.contextmanager
def _through_relay(store_url: str) -> Iterator[tuple[str, Wire | None]]:
    """The store's URL, through the counting relay for PostgreSQL."""
    if not store_url.startswith("postgresql"):
        yield store_url, None
        return
    with counting_relay(store_url) as wire:
        yield wire.url, wire


async def _count(store_url: str) -> dict[str, Any]:
    with _through_relay(store_url) as (url, wire):
        return await _count_middleware(url, wire)


async def _count_middleware(store_url: str, wire: Wire | None) -> dict[str, Any]:
    from whatsorder_idempotency.stores.redis import RedisStore

    store: Any
    if store_url.startswith("redis"):
        store = RedisStore.from_url(store_url, prefix=harness.REDIS_PREFIX + "trips:")
    else:
        store = _sql_store(store_url)
    transport = httpx.ASGITransport(app=_app(store))
    counts: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def post(key: str) -> httpx.Response:
                return await client.post(
                    "/orders", json={"sku": "ATTA-5KG", "qty": 2}, headers={"Idempotency-Key": key}
                )

            await post("warm-up")  # table created, scripts loaded, pool filled
            await post("warm-up")
            for kind, key in (("first", "trips-1"), ("replay", "trips-1")):
                if isinstance(store, RedisStore):
                    counts[kind] = await _redis_commands(store, lambda k=key: post(k))
                else:
                    with _sql_counter(store, wire) as seen:
                        response = await post(key)
                    assert response.status_code == 201, response.text
                    counts[kind] = seen
    finally:
        await store.close()
    return counts


async def _count_transactional(store_url: str) -> dict[str, Any]:
    with _through_relay(store_url) as (url, wire):
        return await _count_one_transaction(url, wire)


async def _count_one_transaction(store_url: str, wire: Wire | None) -> dict[str, Any]:
    """The engine's transactional mode (whatsorder-tx), its handler writing nothing itself.

    As the bench app runs it: its replay front reads first (``replay_of``), and only what it
    does not answer goes on to ``execute``, which claims a key the front found absent without
    reading it again."""
    from whatsorder_idempotency import (
        HandlerResult,
        IdempotencyEngine,
        IdempotentRequest,
        StoredResponse,
    )

    store = _sql_store(store_url)
    engine = IdempotencyEngine(store)

    async def handle(_connection: Any) -> HandlerResult:
        return HandlerResult(StoredResponse.build(201, b'{"id":1}', {}))

    async def execute(key: str) -> Any:
        request = IdempotentRequest("tx", key, "f")
        return await engine.replay_of(request) or await engine.execute(request, handle)

    counts: dict[str, Any] = {}
    try:
        await execute("warm-up")
        await execute("warm-up")
        for kind, key in (("first", "trips-tx-1"), ("replay", "trips-tx-1")):
            with _sql_counter(store, wire) as seen:
                await execute(key)
            counts[kind] = seen
    finally:
        await store.close()
    return counts


@contextlib.contextmanager
def _sql_counter(store: Any, wire: Wire | None) -> Iterator[dict[str, Any]]:
    """Round trips on PostgreSQL's wire; on SQLite, statements run, wherever they run."""
    engine = store.engine.sync_engine
    seen: dict[str, Any] = {"statements": [], "begin": 0, "commit": 0, "rollback": 0, "ping": 0}
    if wire is not None:
        wire.clear()

    def note(statement: str) -> None:
        seen["statements"].append(" ".join(statement.split())[:80])

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if wire is None:
            note(statement)

    def counter(name: str) -> Any:
        def count(*_: Any) -> None:
            seen[name] += 1

        return count

    def on_begin(connection: Any) -> None:
        # In autocommit the driver sends no BEGIN (asyncpg starts no transaction).
        options = connection.get_execution_options()
        if options.get("isolation_level") != "AUTOCOMMIT" and not options.get(AUTOCOMMIT):
            seen["begin"] += 1

    listeners = [
        ("before_cursor_execute", on_statement),
        ("begin", on_begin),
        ("commit", counter("commit")),
        ("rollback", counter("rollback")),
    ]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    # On a SQLite file the reads, claims and completions run on sqlite3 connections of the
    # store's own (sqlite_file.py; bench only).
    reads = store._reads.file_reads
    files = [f for f in (None if reads is None else reads.file, store._lone.file) if f is not None]
    for file in files:
        file.trace = note
    dialect = engine.dialect
    original_ping = dialect.do_ping

    def ping(connection: Any) -> bool:
        seen["ping"] += 1
        return bool(original_ping(connection))

    dialect.do_ping = ping  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        dialect.do_ping = original_ping  # type: ignore[method-assign]
        for name, listener in listeners:
            event.remove(engine, name, listener)
        for file in files:
            file.trace = None
        if wire is not None:  # every wait for the server: statements, BEGIN, COMMIT, pings
            seen["statements"] = [" ".join(trip)[:80] for trip in wire.trips]
            seen["round_trips"] = len(wire.trips)
        else:  # SQLite: each statement (BEGIN IMMEDIATE is one), and each COMMIT
            seen["round_trips"] = len(seen["statements"]) + seen["commit"]
        seen["statement_count"] = len(seen["statements"])


async def _redis_commands(store: Any, send: Any) -> dict[str, Any]:
    """Commands the store's connection sent between two markers, as Redis's MONITOR saw them."""
    monitor = subprocess.Popen(  # noqa: ASYNC220 (started once, read after the request)
        ["redis-cli", "-u", harness.REDIS_URL, "monitor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        await asyncio.sleep(0.3)
        await store.client.echo("bench-mark-start")
        response = await send()
        await store.client.echo("bench-mark-end")
        assert response.status_code == 201, response.text
        await asyncio.sleep(0.3)
    finally:
        monitor.terminate()
        output, _ = monitor.communicate(timeout=10)
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "bench-mark-start" in line)
    client = lines[start].split("[", 1)[1].split("]", 1)[0]  # "db addr" of the store's connection
    commands = []
    for line in lines[start + 1 :]:
        if "bench-mark-end" in line:
            break
        if f"[{client}]" in line:
            commands.append(line.split("]", 1)[1].strip()[:80])
    return {"commands": commands, "round_trips": len(commands)}
