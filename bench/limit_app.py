"""The ``limit`` contender: the cheapest correct answer to ``POST /orders`` with a key.

A raw ASGI app on the drivers themselves (sqlite3, asyncpg, redis.asyncio): no framework, no
ORM, no engine. It serves the bench's endpoint with the same request and the same 201 body as
``bench/app.py`` and does, per request, the least a correct idempotency layer must do:

    store     replay                  first request
    sqlite    1 SELECT by key         SELECT (miss); BEGIN IMMEDIATE, INSERT order,
                                      INSERT record, COMMIT
    postgres  1 SELECT by key         SELECT (miss); BEGIN, INSERT order, INSERT record, COMMIT
    redis     1 GET                   GET (miss); INSERT order in PostgreSQL; SET NX EX

A SQL record is committed in the handler's own transaction, so an order never exists without
its stored answer; a concurrent duplicate fails on the record's primary key, rolls back its
order and answers the stored record. SQLite runs on sqlite3 connections, one per thread of a
small pool: a replay is one hop to a thread, a first request two (its read, then its whole
transaction), with the engine's pragmas (WAL, ``synchronous=NORMAL``). PostgreSQL connections
come from a list of the app's own (``Connections``), not asyncpg's pool, whose checkout and
return cost more CPU than the replay's statement; Redis's from redis-py's pool without its lock,
metrics and per-command socket timeout (a task per send). The engine's stores take theirs the
same ways (docs/benchmarks.md, items 16 and 17): a yardstick that paid for what the engine
skips would flatter it.

It is a yardstick, not a product. It does NOT:
- compare a replay's body with the first one (a reused key with another body gets the stored
  answer, not 422) or scope keys by route;
- stop concurrent copies early: each copy that missed the read runs the handler, and only the
  record's key rolls its order back (on SQLite one copy after another behind the write lock),
  so it is no floor for the storm and is left out of it;
- in the Redis group, stop concurrent duplicates (each inserts its order, only the first SET
  wins) or survive a crash between the order's INSERT and the SET (the order stays, unrecorded);
- expire SQL records, check a key's characters (only its length, 1 to 255) or repeated headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Answer = tuple[int, bytes]
THREADS = 5  # SQLite connections per process, as the other contenders' pools (3 + 2 overflow)
POOL_SIZE = 5  # asyncpg connections per process, the same bound
REDIS_TTL = 24 * 3600
INSERT_ORDER = "INSERT INTO bench_orders (sku, qty) VALUES ($1, $2) RETURNING id"
SELECT_RECORD = "SELECT status, body FROM limit_records WHERE key = $1"
INSERT_RECORD = "INSERT INTO limit_records (key, status, body) VALUES ($1, $2, $3)"
NOT_FOUND = (404, b'{"detail":"Not Found"}')
INVALID_BODY = (422, b'{"detail":"the body must be {\\"sku\\": string, \\"qty\\": integer}"}')
INVALID_KEY = (400, b'{"detail":"Idempotency-Key must be 1 to 255 characters"}')


def order_body(order_id: int, sku: str, qty: int) -> bytes:
    """The endpoint's answer, byte for byte as FastAPI renders ``bench/app.py``'s dict."""
    order = {"id": order_id, "sku": sku, "qty": qty}
    return json.dumps(order, ensure_ascii=False, separators=(",", ":")).encode()


class SqliteRecords:
    """Records and orders in one SQLite file, each connection used by one thread."""

    def __init__(self, db_url: str, sleep: float) -> None:
        self.path = db_url.removeprefix("sqlite:///")
        self.sleep = sleep
        self.local = threading.local()
        self.threads = ThreadPoolExecutor(THREADS, "limit-sqlite", initializer=self._connect)

    def _connect(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        self.local.connection = connection

    async def _run(self, step: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.threads, step, *args)

    async def start(self) -> None:
        await self._run(self._create_table)

    def _create_table(self) -> None:
        self.local.connection.execute(
            "CREATE TABLE IF NOT EXISTS limit_records "
            "(key TEXT PRIMARY KEY, status INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID"
        )

    async def close(self) -> None:
        self.threads.shutdown(wait=True)

    async def lookup(self, key: str) -> Answer | None:
        return await self._run(self._select, key)  # type: ignore[no-any-return]

    def _select(self, key: str) -> Answer | None:
        sql = "SELECT status, body FROM limit_records WHERE key = ?"
        row = self.local.connection.execute(sql, (key,)).fetchone()
        return (row[0], row[1]) if row else None

    async def place(self, key: str | None, sku: str, qty: int) -> Answer:
        return await self._run(self._transaction, key, sku, qty)  # type: ignore[no-any-return]

    def _transaction(self, key: str | None, sku: str, qty: int) -> Answer:
        connection = self.local.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            sql = "INSERT INTO bench_orders (sku, qty) VALUES (?, ?)"
            order_id = connection.execute(sql, (sku, qty)).lastrowid
            if self.sleep:  # the storm's slow handler, inside the transaction
                time.sleep(self.sleep)
            body = order_body(order_id, sku, qty)
            if key is not None:
                connection.execute(
                    "INSERT INTO limit_records (key, status, body) VALUES (?, 201, ?)", (key, body)
                )
            connection.execute("COMMIT")
            return 201, body
        except sqlite3.IntegrityError:  # a duplicate committed the key first
            connection.execute("ROLLBACK")
            assert key is not None
            stored = self._select(key)
            assert stored is not None
            return stored
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise


class PostgresRecords:
    """Records and orders in one PostgreSQL database, on an asyncpg pool."""

    def __init__(self, db_url: str, sleep: float) -> None:
        self.dsn = db_url
        self.sleep = sleep
        self.pool: Any = None

    async def start(self) -> None:
        self.pool = Connections(self.dsn)
        with contextlib.suppress(Exception):  # another worker created it first
            await self.pool.execute(
                "CREATE TABLE IF NOT EXISTS limit_records "
                "(key TEXT PRIMARY KEY, status INTEGER NOT NULL, body BYTEA NOT NULL)"
            )

    async def close(self) -> None:
        await self.pool.close()

    async def lookup(self, key: str) -> Answer | None:
        row = await self.pool.fetchrow(SELECT_RECORD, key)
        return (row[0], row[1]) if row else None

    async def place(self, key: str | None, sku: str, qty: int) -> Answer:
        import asyncpg

        async with self.pool.acquire() as connection:
            try:
                async with connection.transaction():
                    order_id = await connection.fetchval(INSERT_ORDER, sku, qty)
                    if self.sleep:  # the storm's slow handler, inside the transaction
                        await asyncio.sleep(self.sleep)
                    body = order_body(order_id, sku, qty)
                    if key is not None:
                        await connection.execute(INSERT_RECORD, key, 201, body)
            except asyncpg.UniqueViolationError:  # a duplicate committed the key first
                row = await connection.fetchrow(SELECT_RECORD, key)
                return row[0], row[1]
        return 201, body


class RedisRecords:
    """Records in Redis (one value: 3 status digits, then the body), orders in PostgreSQL."""

    def __init__(self, db_url: str, store_url: str, prefix: str, sleep: float) -> None:
        from redis.asyncio import Redis

        self.dsn = db_url
        self.redis = Redis.from_pool(_lean_redis_pool(store_url))
        self.prefix = prefix
        self.sleep = sleep
        self.pool: Any = None

    async def start(self) -> None:
        self.pool = Connections(self.dsn)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()

    async def lookup(self, key: str) -> Answer | None:
        value = await self.redis.get(self.prefix + key)
        return (int(value[:3]), value[3:]) if value else None

    async def place(self, key: str | None, sku: str, qty: int) -> Answer:
        order_id = await self.pool.fetchval(INSERT_ORDER, sku, qty)  # one statement: autocommit
        if self.sleep:
            await asyncio.sleep(self.sleep)
        body = order_body(order_id, sku, qty)
        if key is not None:
            stored = await self.redis.set(self.prefix + key, b"201" + body, nx=True, ex=REDIS_TTL)
            if not stored:  # a concurrent duplicate set it first: its answer stands
                return await self.lookup(key) or (201, body)
        return 201, body


class Connections:
    """At most ``POOL_SIZE`` asyncpg connections, opened as needed; a checkout is a list's last."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.idle: list[Any] = []
        self.slots = asyncio.Semaphore(POOL_SIZE)

    @contextlib.asynccontextmanager
    async def acquire(self) -> Any:
        import asyncpg

        await self.slots.acquire()
        try:
            connection = self.idle.pop() if self.idle else await asyncpg.connect(self.dsn)
            try:
                yield connection
            except BaseException:
                connection.terminate()
                raise
            self.idle.append(connection)
        finally:
            self.slots.release()

    async def fetchrow(self, sql: str, *arguments: Any) -> Any:
        async with self.acquire() as connection:
            return await connection.fetchrow(sql, *arguments)

    async def fetchval(self, sql: str, *arguments: Any) -> Any:
        async with self.acquire() as connection:
            return await connection.fetchval(sql, *arguments)

    async def execute(self, sql: str, *arguments: Any) -> Any:
        async with self.acquire() as connection:
            return await connection.execute(sql, *arguments)

    async def close(self) -> None:
        for connection in self.idle:
            await connection.close()
        self.idle.clear()


def _lean_redis_pool(url: str) -> Any:
    """redis-py's pool, its checkout and return without the lock and the metrics."""
    from redis.asyncio import ConnectionPool

    class LeanPool(ConnectionPool):
        async def get_connection(self, *_args: Any, **_options: Any) -> Any:
            connection = self.get_available_connection()
            if not connection.is_connected:
                await connection.connect()
            return connection

        async def release(self, connection: Any) -> None:
            self._in_use_connections.discard(connection)
            self._available_connections.append(connection)

    return LeanPool.from_url(url, socket_timeout=None)


def parse_order(body: bytes) -> tuple[str, int] | None:
    """``{"sku": str, "qty": int}``, as the endpoint's model asks; None when it is not."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    sku, qty = data.get("sku"), data.get("qty")
    if not isinstance(sku, str) or not isinstance(qty, int) or isinstance(qty, bool):
        return None
    return sku, qty


def create() -> Any:
    """The limit's ASGI app for ``BENCH_DB`` / ``BENCH_STORE`` (called by ``bench.app:create``)."""
    db_url, store_url = os.environ["BENCH_DB"], os.environ["BENCH_STORE"]
    sleep = float(os.environ.get("BENCH_SLEEP_MS", "0")) / 1000
    records: SqliteRecords | PostgresRecords | RedisRecords
    if store_url.startswith("redis"):
        prefix = os.environ["BENCH_PREFIX"] + "limit:"
        records = RedisRecords(db_url, store_url, prefix, sleep)
    elif store_url.startswith("sqlite"):
        records = SqliteRecords(store_url, sleep)
    else:
        records = PostgresRecords(store_url, sleep)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(records, receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] != "POST" or scope["path"] != "/orders":
            await _send(send, NOT_FOUND)
            return
        raw_key = next((v for k, v in scope["headers"] if k == b"idempotency-key"), None)
        key = raw_key.decode("latin-1") if raw_key is not None else None
        if key is not None:
            if not 0 < len(key) <= 255:
                await _send(send, INVALID_KEY)
                return
            stored = await records.lookup(key)
            if stored is not None:
                await _send(send, stored)
                return
        order = parse_order(body)
        if order is None:
            await _send(send, INVALID_BODY)
            return
        await _send(send, await records.place(key, *order))

    return app


async def _send(send: Any, answer: Answer) -> None:
    status, body = answer
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": bytes(body)})


async def _lifespan(records: Any, receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await records.start()
            except Exception as error:  # the harness shows the log's last line
                await send({"type": "lifespan.startup.failed", "message": repr(error)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await records.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
