"""An app of someone else's on the engine's lease mode: ``IdempotencyMiddleware`` on Redis.

Its effect is a row in PostgreSQL with no unique key at all, so only the middleware stands
between a retry and a second row. Served by uvicorn for the Redis outage test:
``LEASE_REDIS_URL`` names the store, ``LEASE_DATABASE_URL`` the database, whose table ``effects``
(``id``, ``idempotency_key``) the test creates.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request

from whatsorder_idempotency import IdempotencyMiddleware, open_store


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(
        os.environ["LEASE_DATABASE_URL"], min_size=1, max_size=4
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/orders")
async def create_order(request: Request) -> dict[str, int]:
    key = request.headers["idempotency-key"]
    row = await request.app.state.pool.fetchval(
        "INSERT INTO effects (idempotency_key) VALUES ($1) RETURNING id", key
    )
    return {"id": int(row)}


app.add_middleware(
    IdempotencyMiddleware, store=open_store(os.environ["LEASE_REDIS_URL"]), required=True
)
