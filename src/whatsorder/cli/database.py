"""The commands' way to the database: an engine for one command, disposed when it is done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")


async def with_engine(url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``work``'s result on an engine of the database at ``url``."""
    from whatsorder.db.engine import open_database

    engine = open_database(url)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


async def with_connection(url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """``work``'s result on one connection to the database at ``url``."""

    async def connected(engine: AsyncEngine) -> T:
        async with engine.connect() as connection:
            return await work(connection)

    return await with_engine(url, connected)
