"""A FastAPI app whose endpoint runs the engine in transactional mode, behind a ``ReplayFront``.

``create(url)`` builds it for a test in this process; ``app`` (module level) is the same app for
``served.py``, on the database of ``FRONT_DB_URL``, with a handler that sleeps
``FRONT_SLEEP`` seconds inside its transaction. The endpoint inserts one order per run and
answers with the order's id: every run is counted where a user would look, in the table.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyEngine,
    IdempotencyError,
    IdempotencyEvent,
    IdempotentRequest,
    InvalidKey,
    ReplayFront,
    SqlStore,
    StoredResponse,
    fingerprint,
    idempotency_table,
    key_from_headers,
    problem_for,
    sql_engine,
)

metadata = MetaData()
orders = Table(
    "front_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(2_000_000), nullable=False),
)


@dataclass
class Front:
    """The app, and what a test looks at: endpoint entries, the engine's events, the table."""

    app: FastAPI
    database: AsyncEngine
    engine: IdempotencyEngine[AsyncConnection]
    entered: list[str] = field(default_factory=list)  # each time the endpoint ran, its key
    events: list[IdempotencyEvent] = field(default_factory=list)

    async def prepare(self) -> None:
        await create_tables(self.database)

    async def orders(self) -> int:
        async with self.database.connect() as connection:
            counted = await connection.execute(select(func.count()).select_from(orders))
            return int(counted.scalar_one())

    async def close(self) -> None:
        store = self.engine.store
        assert isinstance(store, SqlStore)
        await store.close()


def create(url: str, *, sleep: float = 0.0, max_request_bytes: int = 1024 * 1024) -> Front:
    database = sql_engine(url, pool_size=5, max_overflow=5)
    app = FastAPI()
    front = Front(app, database, IdempotencyEngine(_store(database)))
    front.engine.listeners = (front.events.append,)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/orders")
    async def create_order(request: Request) -> Response:
        body = await request.body()
        front.entered.append(request.headers.get("idempotency-key", ""))
        try:
            key = key_from_headers(request.headers)
            if key is None:
                async with database.begin() as connection:
                    return JSONResponse({"id": await _insert(connection, body)}, 201)
            claimed = IdempotentRequest(
                f"POST {request.url.path}",
                key,
                fingerprint("POST", request.url.path, body, request.headers.get("content-type")),
            )

            async def handle(connection: AsyncConnection) -> HandlerResult:
                order_id = await _insert(connection, body)
                if sleep:
                    await asyncio.sleep(sleep)
                answer = b'{"id":%d,"size":%d}' % (order_id, len(body))
                return HandlerResult(
                    StoredResponse.build(201, answer, {"content-type": "application/json"})
                )

            result = await front.engine.execute(claimed, handle)
        except (IdempotencyError, InvalidKey) as error:
            status, problem, headers = problem_for(error)
            return Response(problem, status, headers)
        stored = result.response
        return Response(stored.body, stored.status, dict(stored.headers))

    app.add_middleware(ReplayFront, engine=front.engine, max_request_bytes=max_request_bytes)
    return front


async def create_tables(database: AsyncEngine) -> None:
    async with database.begin() as connection:
        await connection.run_sync(metadata.create_all)


async def _prepare(url: str) -> None:
    """The table, on connections of a loop of its own (uvicorn's comes later)."""
    database = sql_engine(url)
    await create_tables(database)
    await database.dispose()


def _store(database: AsyncEngine) -> SqlStore:
    return SqlStore(database, idempotency_table(MetaData()), create_table=True)


async def _insert(connection: AsyncConnection, body: bytes) -> int:
    inserted = await connection.execute(
        insert(orders).values(body=body.decode("utf-8", "replace")).returning(orders.c.id)
    )
    return int(inserted.scalar_one())


if "FRONT_DB_URL" in os.environ:  # served by uvicorn in a process of its own (served.py)
    asyncio.run(_prepare(os.environ["FRONT_DB_URL"]))
    app = create(os.environ["FRONT_DB_URL"], sleep=float(os.environ.get("FRONT_SLEEP", "0"))).app
