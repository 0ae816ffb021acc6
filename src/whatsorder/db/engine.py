"""The application's database engine: one per process, shared by the orders and the
idempotency records that commit with them, so tuned as the SQL store needs (on SQLite: WAL, a
busy timeout and transactions that begin IMMEDIATE; on PostgreSQL: no pre-ping, but pooled
connections the server has closed, as a restart does, are replaced at checkout)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder_idempotency import sql_engine


def open_database(
    url: str,
    *,
    busy_timeout: timedelta = timedelta(seconds=5),
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
) -> AsyncEngine:
    """The engine of the database at ``url`` (``sqlite:///…`` or ``postgresql://…``)."""
    return sql_engine(
        url,
        busy_timeout=busy_timeout,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
    )
