"""What the routes share for the life of the app: settings, database, engine, limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder import observability
from whatsorder.db.engine import open_database
from whatsorder.db.tables import webhook_idempotency
from whatsorder.idempotency import IdempotencyConfig, IdempotencyEngine, SqlStore
from whatsorder.settings import Settings
from whatsorder.statistics import OutcomeCounter
from whatsorder.web.guards import RateLimits


@dataclass
class Runtime:
    settings: Settings
    database: AsyncEngine
    idempotency: IdempotencyEngine[AsyncConnection]
    limits: RateLimits
    outcomes: OutcomeCounter

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        wait = timedelta(seconds=settings.idempotency_wait_seconds)
        database = open_database(
            settings.database_url,
            busy_timeout=wait,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
        config = IdempotencyConfig(
            ttl=timedelta(seconds=settings.idempotency_ttl_seconds), in_flight_wait=wait
        )
        store = SqlStore(database, webhook_idempotency, in_flight_wait=wait)
        outcomes = OutcomeCounter()
        engine = IdempotencyEngine[AsyncConnection](
            store, config, listeners=[observability.on_idempotency_event, outcomes]
        )
        return cls(settings, database, engine, RateLimits(settings), outcomes)


def runtime_of(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime
