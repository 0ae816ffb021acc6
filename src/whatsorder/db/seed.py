"""Loading the demo catalogue (``whatsorder seed-demo``, ``make run``, tests and benchmarks)."""

from __future__ import annotations

from whatsorder.db.engine import open_database
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering.demo import DEMO_CATALOGUE


async def seed_demo(database_url: str) -> int:
    """Add the demo products that are missing; returns how many were added."""
    engine = open_database(database_url)
    try:
        async with SqlUnitOfWork(engine) as uow:
            added = await uow.ordering.upsert_products(DEMO_CATALOGUE)
            await uow.commit()
    finally:
        await engine.dispose()
    return added
