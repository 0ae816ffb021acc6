"""Building the console benchmark's database: the schema, the demo catalogue, then the shop's
rows (`bench.console_shop`) in bulk, a chunk at a time: COPY on PostgreSQL (asyncpg's
``copy_records_to_table``), ``executemany`` in one transaction on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.console_shop import Row, Rows, Shop, tables
from whatsorder.db import migrate
from whatsorder.db.seed import seed_demo

CHUNK = 20_000


def build(url: str, shop: Shop) -> Shop:
    """Migrate ``url``, load the demo catalogue, then every table's rows."""
    migrate.upgrade(url)
    asyncio.run(seed_demo(url))
    made = tables(shop)
    if url.startswith("sqlite"):
        shop.counts = _write_sqlite(url.removeprefix("sqlite:///"), made)
    else:
        shop.counts = asyncio.run(_write_postgres(url, made))
    return shop


def _chunks(rows: Iterable[Row]) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sqlite_value(value: Any) -> Any:
    # SQLAlchemy's SQLite DateTime: naive UTC text; the app reads it back as UTC.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _write_sqlite(path: str, tables: dict[str, tuple[tuple[str, ...], Rows]]) -> dict[str, int]:
    counts = dict.fromkeys(tables, 0)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        with connection:  # one transaction
            for name, (columns, rows) in tables.items():
                statement = (
                    f"INSERT INTO {name} ({', '.join(columns)}) "  # noqa: S608 (our own names)
                    f"VALUES ({', '.join('?' * len(columns))})"
                )
                for chunk in _chunks(rows()):
                    connection.executemany(
                        statement, [tuple(map(_sqlite_value, row)) for row in chunk]
                    )
                    counts[name] += len(chunk)
        connection.execute("ANALYZE")
    return counts


async def _write_postgres(
    url: str, tables: dict[str, tuple[tuple[str, ...], Rows]]
) -> dict[str, int]:
    counts = dict.fromkeys(tables, 0)
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            for name, (columns, rows) in tables.items():
                for chunk in _chunks(rows()):
                    await connection.copy_records_to_table(name, records=chunk, columns=columns)
                    counts[name] += len(chunk)
        for name, (columns, _rows) in tables.items():
            if "id" not in columns:
                continue
            # COPY with explicit ids leaves the sequences behind: the service's next insert
            # would collide.
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "  # noqa: S608
                f"COALESCE((SELECT max(id) FROM {name}), 1))"
            )
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    return counts
