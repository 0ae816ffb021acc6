"""What the routes share for the life of the app: settings, database, engine, limits — and
the only door from the web layer into ``whatsorder.db``: routes get their unit of work here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from whatsorder import observability
from whatsorder.clock import utcnow
from whatsorder.db import migrate, reports
from whatsorder.db.console_fulfilment import ConsoleFulfilment
from whatsorder.db.console_health import ConsoleHealth
from whatsorder.db.console_money import ConsoleMoney
from whatsorder.db.console_payment_links import operator_payment_link
from whatsorder.db.console_queries import ConsoleQueries
from whatsorder.db.console_retailers import ConsoleRetailers
from whatsorder.db.dead_letter_redrives import DeadLetterRedrives
from whatsorder.db.engine import open_database
from whatsorder.db.tables import webhook_idempotency
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.inbox import DeliveryLog
from whatsorder.ordering.link_ports import PaymentLinks
from whatsorder.ordering.ports import UnitOfWork
from whatsorder.ordering.services.payment_links import LinkOutcome
from whatsorder.providers.links.configured import payment_links as configured_links
from whatsorder.settings import Settings
from whatsorder.statistics import OutcomeCounter
from whatsorder.web.console.sessions import SignInLimits
from whatsorder.web.guards import RateLimits
from whatsorder_idempotency import IdempotencyConfig, IdempotencyEngine, SqlStore


@dataclass
class Runtime:
    settings: Settings
    database: AsyncEngine
    idempotency: IdempotencyEngine[AsyncConnection]
    limits: RateLimits
    outcomes: OutcomeCounter
    console_queries: ConsoleQueries
    console_sign_ins: SignInLimits
    inbox: DeliveryLog
    console_money: ConsoleMoney
    console_health: ConsoleHealth
    dead_letter_redrives: DeadLetterRedrives
    console_retailers: ConsoleRetailers
    console_fulfilment: ConsoleFulfilment
    # The provider that makes payment links (PAY); None when none is configured.
    payment_links: PaymentLinks | None = None

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
        inbox = DeliveryLog()
        engine = IdempotencyEngine[AsyncConnection](
            store, config, listeners=[observability.on_idempotency_event, outcomes, inbox]
        )
        return cls(
            settings,
            database,
            engine,
            RateLimits(settings),
            outcomes,
            ConsoleQueries(database),
            SignInLimits(),
            inbox,
            ConsoleMoney(database),
            ConsoleHealth(database),
            DeadLetterRedrives(database),
            ConsoleRetailers(database),
            ConsoleFulfilment(database),
            configured_links(settings),
        )

    async def close(self) -> None:
        """Close the idempotency store's own connections, then the database's pool."""
        store = self.idempotency.store
        if isinstance(store, SqlStore):
            await store.close_own_connections()
        await self.database.dispose()

    def unit_of_work(self, connection: AsyncConnection) -> UnitOfWork:
        """The unit of work on the idempotency claim's own transaction."""
        return SqlUnitOfWork(connection)

    async def make_payment_link(
        self, number: str, operator: str, address: str | None
    ) -> LinkOutcome:
        """An operator's payment link for order ``number`` (audited)."""
        return await operator_payment_link(
            self.database, self.payment_links, number, operator, utcnow(), address
        )

    # What the operators' routes read.

    def schema_head(self) -> str | None:
        """The schema revision this code expects."""
        return migrate.head_revision(self.settings.database_url)

    async def recent_orders(self, limit: int) -> list[dict[str, Any]]:
        async with self.database.connect() as connection:
            return await reports.recent_orders(connection, limit=limit)

    async def recent_dead_letters(self, limit: int) -> list[dict[str, Any]]:
        async with self.database.connect() as connection:
            return await reports.recent_dead_letters(connection, limit=limit)


def runtime_of(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime
