"""An app of someone else's on the transactional middleware, served by uvicorn to be killed.

``CRASH_STORE_URL`` names its database (the store's and the orders' alike); ``CRASH_MARKS`` a
folder where it notes, per request, that its write was made. A request's ``X-Crash`` header
says where the process dies: ``after-write`` (the order is written, not yet committed: the
handler then waits to be killed) or ``after-commit`` (the answer is committed with the order;
the process dies before a byte of it goes out).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder_idempotency import (
    IdempotencyMiddleware,
    SqlStore,
    idempotent_connection,
    open_store,
)

metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
)
store = open_store(os.environ["CRASH_STORE_URL"])
assert isinstance(store, SqlStore)
MARKS = Path(os.environ["CRASH_MARKS"])


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with store.engine.begin() as connection:
        await connection.run_sync(metadata.create_all, checkfirst=True)
    yield


shop = FastAPI(lifespan=lifespan)


@shop.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@shop.post("/orders", status_code=201)
async def create_order(
    request: Request, db: Annotated[AsyncConnection, Depends(idempotent_connection)]
) -> dict[str, int]:
    key = request.headers["idempotency-key"]
    made = await db.execute(insert(orders).values(idempotency_key=key, pid=os.getpid()))
    if request.headers.get("x-crash") == "after-write":
        (MARKS / "written").write_text(str(os.getpid()))
        await asyncio.sleep(120)  # killed here, the order written but not committed
    return {"id": int(made.inserted_primary_key[0]), "pid": os.getpid()}


async def die_after_commit(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Outside the middleware: it sends the answer's start only once the commit is done."""
    crash = scope["type"] == "http" and (b"x-crash", b"after-commit") in scope["headers"]

    async def sending(message: dict[str, Any]) -> None:
        if crash and message["type"] == "http.response.start":
            os.kill(os.getpid(), signal.SIGKILL)
        await send(message)

    await guarded(scope, receive, sending)


guarded = IdempotencyMiddleware(shop, store=store, required=True)
app = die_after_commit
