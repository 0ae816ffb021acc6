"""The transactional middleware: a handler's writes commit with its stored answer, or not at all.

A FastAPI app on SQLite and on PostgreSQL writes its order on ``idempotent_connection()``; the
user's truth is the ``orders`` table. (The SIGKILL scenarios are in test_crash_after_write.py.)
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSON
from starlette.routing import Route

from whatsorder_idempotency import (
    IdempotencyMiddleware,
    NotGuarded,
    SqlStore,
    idempotent_connection,
    open_store,
)

metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sku", String(40), nullable=False),
)
Connection = Annotated[AsyncConnection, Depends(idempotent_connection)]


class Gate:
    """Lets a test hold a handler after its write, at the moment a crash or a pause would hit."""

    def __init__(self) -> None:
        self.written = asyncio.Event()
        self.go_on = asyncio.Event()
        self.go_on.set()


def fastapi_orders(gate: Gate) -> FastAPI:
    app = FastAPI()

    @app.post("/orders", status_code=201)
    async def create(order: dict[str, str], connection: Connection) -> JSONResponse:
        made = await connection.execute(insert(orders).values(sku=order["sku"]))
        gate.written.set()
        await gate.go_on.wait()
        if order.get("then") == "crash":
            raise RuntimeError("the handler failed after its write")
        if order.get("then") == "503":
            return JSONResponse({"error": "try later"}, status_code=503)
        if order.get("then") == "big":
            return JSONResponse({"id": made.inserted_primary_key[0], "pad": "x" * 100_000})
        return JSONResponse({"id": made.inserted_primary_key[0]}, status_code=201)

    return app


@pytest.fixture
async def store(sql_url: str) -> AsyncIterator[SqlStore]:
    opened = open_store(sql_url)
    assert isinstance(opened, SqlStore)
    async with opened.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield opened
    await opened.close()


async def order_count(store: SqlStore) -> int:
    async with store.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(orders))).scalar())


def client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://shop")


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{key}"'}


async def test_the_write_and_the_answer_commit_together_and_a_retry_replays(
    store: SqlStore,
) -> None:
    app = IdempotencyMiddleware(fastapi_orders(Gate()), store=store, required=True)
    async with client(app) as http:
        first = await http.post("/orders", json={"sku": "ATTA-5KG"}, headers=keyed("o-1"))
        again = await http.post("/orders", json={"sku": "ATTA-5KG"}, headers=keyed("o-1"))
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await order_count(store) == 1


@pytest.mark.parametrize("then", ["crash", "503"])
async def test_a_failure_after_the_write_undoes_it_and_the_retry_runs_afresh(
    store: SqlStore, then: str
) -> None:
    app = IdempotencyMiddleware(fastapi_orders(Gate()), store=store, required=True)
    async with client(app) as http:
        failed = await http.post("/orders", json={"sku": "A", "then": then}, headers=keyed("o-2"))
        assert failed.status_code in {500, 503}
        assert await order_count(store) == 0  # the write went with the failure
        retried = await http.post("/orders", json={"sku": "A", "then": then}, headers=keyed("o-2"))
        assert "idempotent-replayed" not in retried.headers  # ran again: nothing was kept
    assert await order_count(store) == 0


async def test_duplicates_in_flight_wait_for_the_commit_and_replay_the_one_order(
    store: SqlStore,
) -> None:
    gate = Gate()
    gate.go_on.clear()
    app = IdempotencyMiddleware(fastapi_orders(gate), store=store, required=True)
    async with client(app) as http:
        first = asyncio.create_task(
            http.post("/orders", json={"sku": "RICE"}, headers=keyed("o-3"))
        )
        await asyncio.wait_for(gate.written.wait(), 10)
        copies = [
            asyncio.create_task(http.post("/orders", json={"sku": "RICE"}, headers=keyed("o-3")))
            for _ in range(5)
        ]
        await asyncio.sleep(0.3)
        gate.go_on.set()
        answers = [await first, *[await copy for copy in copies]]
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert await order_count(store) == 1


async def test_a_holder_fenced_out_while_it_ran_loses_its_write_and_says_so(
    store: SqlStore,
) -> None:
    """A successor took the key over (the holder was paused past its lease): the holder's
    compare-and-set on its epoch fails, its order is rolled back, and it answers 409."""
    gate = Gate()
    gate.go_on.clear()
    app = IdempotencyMiddleware(fastapi_orders(gate), store=store, required=True)
    async with client(app) as http:
        holder = asyncio.create_task(
            http.post("/orders", json={"sku": "SUGAR"}, headers=keyed("o-4"))
        )
        await asyncio.wait_for(gate.written.wait(), 10)
        if store.kind == "sqlite":
            # The holder's transaction keeps every other writer out: nobody can take over.
            gate.go_on.set()
            assert (await holder).status_code == 201
            assert await order_count(store) == 1
            return
        async with store.engine.begin() as connection:  # what a successor's take-over does
            await connection.execute(
                update(store.table)
                .where(store.table.c.idempotency_key == "o-4")
                .values(epoch=store.table.c.epoch + 1)
            )
        gate.go_on.set()
        answer = await holder
    assert answer.status_code == 409
    assert "taken over" in answer.json()["detail"]
    assert await order_count(store) == 0


async def test_a_large_answer_waits_for_the_commit_and_is_kept_without_its_body(
    store: SqlStore,
) -> None:
    app = IdempotencyMiddleware(
        fastapi_orders(Gate()), store=store, required=True, max_stored_bytes=1024
    )
    async with client(app) as http:
        first = await http.post("/orders", json={"sku": "X", "then": "big"}, headers=keyed("o-5"))
        again = await http.post("/orders", json={"sku": "X", "then": "big"}, headers=keyed("o-5"))
    assert first.status_code == 200
    assert len(first.content) > 100_000
    assert again.status_code == 200
    assert again.content == b""
    assert again.headers["idempotency-stored"] == "false"
    assert await order_count(store) == 1


async def test_a_starlette_endpoint_takes_the_connection_with_a_plain_call(
    store: SqlStore,
) -> None:
    async def create(request: Request) -> StarletteJSON:
        connection = await idempotent_connection()
        made = await connection.execute(insert(orders).values(sku=(await request.json())["sku"]))
        return StarletteJSON({"id": made.inserted_primary_key[0]}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/orders", create, methods=["POST"])]), store=store
    )
    async with client(app) as http:
        answers = [
            await http.post("/orders", json={"sku": "DAL"}, headers=keyed("o-6")) for _ in range(3)
        ]
    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert await order_count(store) == 1


async def test_asking_outside_a_guarded_request_is_a_clear_error() -> None:
    with pytest.raises(NotGuarded, match="No idempotency key is held"):
        await idempotent_connection()


async def test_asking_on_a_store_without_sql_is_a_clear_error(redis_url: str) -> None:
    failures: list[BaseException] = []

    async def create(request: Request) -> StarletteJSON:
        try:
            await idempotent_connection()
        except NotGuarded as error:
            failures.append(error)
            return StarletteJSON({"error": str(error)}, status_code=400)
        return StarletteJSON({}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/orders", create, methods=["POST"])]), store=redis_url
    )
    async with client(app) as http:
        answer = await http.post("/orders", json={}, headers=keyed(f"o-7-{secrets.token_hex(8)}"))
    assert answer.status_code == 400
    assert "The idempotency store is redis" in str(failures[0])


async def test_a_route_longer_than_the_scope_column_is_guarded_like_any_other(
    store: SqlStore,
) -> None:
    """The default scope is method and path: a long path must not overflow the store's column."""
    app = FastAPI()

    @app.post("/shops/{shop}/orders", status_code=201)
    async def create(shop: str, connection: Connection) -> dict[str, int]:
        made = await connection.execute(insert(orders).values(sku=shop[:40]))
        return {"id": made.inserted_primary_key[0]}

    guarded = IdempotencyMiddleware(app, store=store, required=True)
    long_path = f"/shops/{'s' * 90}/orders"
    async with client(guarded) as http:
        answers = [await http.post(long_path, headers=keyed("o-8")) for _ in range(2)]
        other = await http.post(f"/shops/{'s' * 89}t/orders", headers=keyed("o-8"))
    assert [answer.status_code for answer in answers] == [201, 201]
    assert answers[1].headers["idempotent-replayed"] == "true"
    assert other.status_code == 201
    assert "idempotent-replayed" not in other.headers  # another route: another scope
    assert await order_count(store) == 2


async def test_a_task_the_handler_left_behind_cannot_join_its_transaction(
    store: SqlStore,
) -> None:
    late: list[asyncio.Task[AsyncConnection]] = []

    async def create(request: Request) -> StarletteJSON:
        await idempotent_connection()
        late.append(asyncio.ensure_future(_later_connection()))
        return StarletteJSON({}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/orders", create, methods=["POST"])]), store=store
    )
    async with client(app) as http:
        assert (await http.post("/orders", headers=keyed("o-9"))).status_code == 201
    with pytest.raises(NotGuarded, match="already answered"):
        await late[0]


async def _later_connection() -> AsyncConnection:
    await asyncio.sleep(0.1)
    return await idempotent_connection()


async def test_a_handler_that_commits_the_engines_transaction_is_told_not_to(
    store: SqlStore,
) -> None:
    async def create(request: Request) -> StarletteJSON:
        connection = await idempotent_connection()
        await connection.execute(insert(orders).values(sku="SELF-COMMIT"))
        await connection.commit()
        return StarletteJSON({}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/orders", create, methods=["POST"])]), store=store
    )
    transport = httpx.ASGITransport(app=app)  # the app's error reaches the test as it is
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
        with pytest.raises(RuntimeError, match="leave that to the engine"):
            await http.post("/orders", headers=keyed("o-10"))
