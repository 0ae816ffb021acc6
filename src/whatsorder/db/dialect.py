"""The one place that knows the two databases' ``INSERT … ON CONFLICT`` differ in SQLAlchemy."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def upsert(bind: AsyncConnection | AsyncEngine, table: Table) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` into ``table`` with ``on_conflict_do_nothing``/``…_do_update`` for the bind's
    database: PostgreSQL's, else SQLite's (the two share those methods and their arguments).
    """
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
