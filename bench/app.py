"""The one endpoint every contender serves: ``POST /orders`` inserts one row and answers JSON.

uvicorn loads ``bench.app:create`` (``--factory``) in each worker; the environment says which
idempotency layer wraps the endpoint and where its records and the orders live:

    BENCH_VARIANT   none | whatsorder | whatsorder-tx | powertools | fastapi-idempotency-key |
                    fastapi-idempotency | fastidempotent | asgi-idempotency-header | limit |
                    trivial
    BENCH_DB        the orders' database (sqlite:///… or postgresql://…)
    BENCH_STORE     the layer's store: sqlite:///…, postgresql://… or redis://…/15
    BENCH_PREFIX    a Redis key prefix of this run (never anything outside it is touched)
    BENCH_SLEEP_MS  extra handler time (the storm scenario's slow handler)

The handler is the same for all: parse the JSON, insert one order, answer 201 with it. Only the
idempotency layer around it differs, configured as its README shows. whatsorder is measured
twice: as the middleware (lease mode: the claim, the handler's insert and the stored answer are
three transactions) and, where records and orders share a SQL database, in transactional mode
(``whatsorder-tx``: the claim, the order and the stored answer commit as one transaction, the
way whatsorder's own webhooks run). ``limit`` is not this app: it is the raw ASGI app of
``bench/limit_app.py``, the cheapest correct answer the drivers allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert

# As limit_app.py: 5 connections per process, and no overflow connections opened and closed
# under load (PostgreSQL forks a backend for each: that churn, not idempotency, cost the most).
POOL = {"pool_size": 5, "max_overflow": 0}
metadata = MetaData()
orders = Table(
    "bench_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)

Hook = Callable[[], Awaitable[None]]


class Order(BaseModel):
    sku: str
    qty: int


def create() -> Any:
    """The app of ``BENCH_VARIANT``."""
    variant = os.environ["BENCH_VARIANT"]
    if variant == "trivial":
        return _trivial
    if variant == "limit":
        from bench import limit_app

        return limit_app.create()
    from fastapi import FastAPI

    from whatsorder_idempotency import sql_engine

    database = sql_engine(os.environ["BENCH_DB"], **POOL)
    sleep = float(os.environ.get("BENCH_SLEEP_MS", "0")) / 1000
    startup: list[Hook] = []
    shutdown: list[Hook] = [database.dispose]

    async def place(order: Order) -> dict[str, Any]:
        async with database.begin() as connection:
            result = await connection.execute(
                insert(orders).values(sku=order.sku, qty=order.qty).returning(orders.c.id)
            )
            order_id = result.scalar_one()
        if sleep:
            await asyncio.sleep(sleep)
        return {"id": order_id, "sku": order.sku, "qty": order.qty}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        for hook in startup:
            await hook()
        yield
        for hook in shutdown:
            await hook()

    app = FastAPI(lifespan=lifespan)
    if variant == "powertools":
        _powertools(app, place)
    elif variant == "whatsorder-tx":
        _whatsorder_tx(app, database, sleep)
    else:

        @app.post("/orders", status_code=201)
        async def create_order(order: Order) -> dict[str, Any]:
            return await place(order)

        WRAPPERS[variant](app, startup, shutdown)
    return app


async def _trivial(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The load generator's yardstick: the cheapest ASGI answer uvicorn can give."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


def _none(_app: Any, _startup: list[Hook], _shutdown: list[Hook]) -> None:
    """No idempotency at all: the baseline."""


def _whatsorder(app: Any, _startup: list[Hook], shutdown: list[Hook]) -> None:
    from whatsorder_idempotency import IdempotencyMiddleware, SqlStore, idempotency_table
    from whatsorder_idempotency.stores.redis import RedisStore

    url = os.environ["BENCH_STORE"]
    store: Any
    if url.startswith("redis"):
        store = RedisStore.from_url(url, prefix=os.environ["BENCH_PREFIX"] + "wo:")
    else:  # open_store's SqlStore, with the pool kept small for the shared PostgreSQL
        from whatsorder_idempotency import sql_engine

        store = SqlStore(
            sql_engine(url, **POOL),
            idempotency_table(MetaData(), "idempotency_records"),
            create_table=True,
        )
    app.add_middleware(IdempotencyMiddleware, store=store)
    shutdown.append(store.close)


def _whatsorder_tx(app: Any, database: Any, sleep: float) -> None:
    """Transactional mode: the order is inserted on the claim's own connection and transaction."""
    from fastapi.responses import Response
    from sqlalchemy.ext.asyncio import AsyncConnection

    from whatsorder_idempotency import (
        HandlerResult,
        IdempotencyEngine,
        IdempotencyError,
        IdempotentRequest,
        InvalidKey,
        ReplayFront,
        SqlStore,
        StoredResponse,
        fingerprint,
        idempotency_table,
        key_from_headers,
        problem_for,
    )

    engine = IdempotencyEngine(
        SqlStore(database, idempotency_table(MetaData(), "idempotency_records"), create_table=True)
    )

    @app.post("/orders", status_code=201)
    async def create_order(request: Request) -> Any:
        body = await request.body()
        order = Order.model_validate_json(body)
        try:
            key = key_from_headers(request.headers)
            if key is None:  # no key: unprotected, as with the middleware's required=False
                async with database.begin() as connection:
                    return await _insert(connection, order)
            # The scope and fingerprint the replay front computes (its defaults).
            content_type = request.headers.get("content-type")
            claimed = IdempotentRequest(
                "POST /orders", key, fingerprint("POST", "/orders", body, content_type)
            )

            async def handle(connection: AsyncConnection) -> HandlerResult:
                answer = await _insert(connection, order)
                if sleep:  # the storm's slow handler: inside the transaction, holding the claim
                    await asyncio.sleep(sleep)
                return HandlerResult(StoredResponse.build(201, answer.body, answer.headers))

            result = await engine.execute(claimed, handle)
        except (IdempotencyError, InvalidKey) as error:
            status, problem, headers = problem_for(error)
            return Response(problem, status, headers)
        stored = result.response
        return Response(stored.body, stored.status, dict(stored.headers))

    # Replays of completed keys are answered before FastAPI routes the request (the engine's
    # ReplayFront); the endpoint's engine then claims a key the front found absent without
    # reading it again.
    app.add_middleware(ReplayFront, engine=engine)


async def _insert(connection: Any, order: Order) -> JSONResponse:
    result = await connection.execute(
        insert(orders).values(sku=order.sku, qty=order.qty).returning(orders.c.id)
    )
    return JSONResponse({"id": result.scalar_one(), "sku": order.sku, "qty": order.qty}, 201)


def _fastapi_idempotency_key(app: Any, _startup: list[Hook], _shutdown: list[Hook]) -> None:
    from fastapi_idempotency_key import IdempotencyMiddleware, RedisBackend, SQLiteBackend

    url = os.environ["BENCH_STORE"]
    backend: Any
    if url.startswith("redis"):
        backend = RedisBackend(redis_url=url, prefix=os.environ["BENCH_PREFIX"] + "fik:")
    else:
        # Its default table name is whatsorder's: keep them apart in the shared file.
        backend = SQLiteBackend(url.removeprefix("sqlite:///"), table_name="fik_records")
    app.add_middleware(IdempotencyMiddleware, backend=backend)


def _fastapi_idempotency(app: Any, startup: list[Hook], shutdown: list[Hook]) -> None:
    from fastapi_idempotency import IdempotencyMiddleware
    from fastapi_idempotency.stores.tortoise import TortoiseStore
    from tortoise import Tortoise

    url = os.environ["BENCH_STORE"]
    if url.startswith("postgresql"):
        db_url = "postgres" + url.removeprefix("postgresql") + "?minsize=1&maxsize=3"
    else:
        db_url = url.replace("sqlite:///", "sqlite://", 1)

    async def start() -> None:
        await Tortoise.init(  # global state: requests run outside the lifespan's context
            db_url=db_url,
            modules={"models": ["fastapi_idempotency.stores.tortoise"]},
            _enable_global_fallback=True,
        )
        with contextlib.suppress(Exception):  # another worker created it first
            await Tortoise.generate_schemas(safe=True)

    startup.append(start)
    shutdown.append(Tortoise.close_connections)
    app.add_middleware(IdempotencyMiddleware, store=TortoiseStore())


def _fastidempotent(app: Any, startup: list[Hook], shutdown: list[Hook]) -> None:
    from fastidempotent import IdempotencyMiddleware

    url = os.environ["BENCH_STORE"]
    backend: Any
    if url.startswith("redis"):
        from fastidempotent.backends.redis import RedisBackend

        backend = RedisBackend(url=url, key_prefix=os.environ["BENCH_PREFIX"] + "fi:")
    elif url.startswith("postgresql"):
        from fastidempotent.backends.postgres import PostgresBackend

        backend = PostgresBackend(url.replace("postgresql", "postgresql+asyncpg", 1), pool_size=2)
    else:
        from fastidempotent.backends.sqlite import SQLiteBackend

        backend = SQLiteBackend(url.replace("sqlite", "sqlite+aiosqlite", 1))

    async def start() -> None:
        with contextlib.suppress(Exception):  # another worker created the table first
            await backend.init()

    startup.append(start)
    shutdown.append(backend.close)
    app.add_middleware(IdempotencyMiddleware, backend=backend)


def _asgi_idempotency_header(app: Any, _startup: list[Hook], shutdown: list[Hook]) -> None:
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends.redis import RedisBackend
    from redis.asyncio import Redis

    client = Redis.from_url(os.environ["BENCH_STORE"])
    prefix = os.environ["BENCH_PREFIX"] + "aih:"
    backend = RedisBackend(client, keys_key=prefix + "keys", response_key=prefix + "response:")
    app.add_middleware(IdempotencyHeaderMiddleware, backend=backend)
    shutdown.append(client.aclose)


def _powertools(app: Any, place: Callable[[Order], Awaitable[dict[str, Any]]]) -> None:
    """Powertools wraps a synchronous function: run in the thread pool, inserting on the loop."""
    import redis
    from anyio import to_thread
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
        RedisCachePersistenceLayer,
    )

    url = os.environ["BENCH_STORE"]
    layer = RedisCachePersistenceLayer(client=redis.Redis.from_url(url))
    config = IdempotencyConfig(
        event_key_jmespath="key",
        # No payload validation: with payload_validation_jmespath="body" its Redis layer answered
        # every replay of an identical body with IdempotencyValidationError (422) in our runs.
        expires_after_seconds=int(timedelta(hours=24).total_seconds()),
    )
    running: dict[str, asyncio.AbstractEventLoop] = {}

    @idempotent_function(
        data_keyword_argument="data",
        persistence_store=layer,
        config=config,
        key_prefix=os.environ["BENCH_PREFIX"] + "pt",
    )
    def process(data: dict[str, Any]) -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(
            place(Order(**data["body"])), running["loop"]
        ).result()

    @app.post("/orders", status_code=201)
    async def create_order(body: Order, request: Request) -> Any:
        key = request.headers.get("idempotency-key")
        if key is None:
            return await place(body)
        running["loop"] = asyncio.get_running_loop()
        data = {"key": key, "body": body.model_dump()}
        try:
            return await to_thread.run_sync(lambda: process(data=data))
        except IdempotencyAlreadyInProgressError:
            return JSONResponse({"detail": "in progress"}, status_code=409)
        except IdempotencyValidationError:
            return JSONResponse({"detail": "payload mismatch"}, status_code=422)


WRAPPERS: dict[str, Callable[[Any, list[Hook], list[Hook]], None]] = {
    "none": _none,
    "whatsorder": _whatsorder,
    "fastapi-idempotency-key": _fastapi_idempotency_key,
    "fastapi-idempotency": _fastapi_idempotency,
    "fastidempotent": _fastidempotent,
    "asgi-idempotency-header": _asgi_idempotency_header,
}
