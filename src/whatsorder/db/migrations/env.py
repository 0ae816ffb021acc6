"""Alembic environment: runs the migrations over the asyncio engine of the configured URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from whatsorder.db.engine import open_database
from whatsorder.db.tables import metadata

# Replicas keep serving during a migration. A statement waiting for a lock on a busy table
# makes every query after it wait too: better to give up and run `whatsorder migrate` again.
POSTGRES_LOCK_TIMEOUT = "10s"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by table copy
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # For the session: it outlives the commit an autocommit_block() makes.
            context.execute(f"SET lock_timeout = '{POSTGRES_LOCK_TIMEOUT}'")
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = open_database(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


url = context.config.get_main_option("sqlalchemy.url")
if url is None:
    raise RuntimeError("no database URL given to the migrations")
asyncio.run(_run_online(url))
