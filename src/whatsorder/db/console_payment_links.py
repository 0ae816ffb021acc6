"""An operator's payment link for an order, from the console or the command line (issue #17).

The link is the service's (`request_payment_link`: one per order, amount and provider, however
many ask at once), asked for any order (an operator is not its retailer). Every request that
made or found a link, or met the provider's refusal, writes a line in the operators' audit
trail, with the provider's message when it refused.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from whatsorder.db.operators import record_action
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering.link_ports import PaymentLinks
from whatsorder.ordering.services.payment_links import LinkOutcome, request_payment_link


async def operator_payment_link(
    database: AsyncEngine,
    links: PaymentLinks | None,
    number: str,
    operator: str,
    now: datetime,
    address: str | None = None,
) -> LinkOutcome:
    outcome = await request_payment_link(SqlUnitOfWork(database), links, number, now)
    if outcome.link is None and outcome.failure is None:
        return outcome  # nothing to pay, no such order, or no provider: nothing was asked
    after = (
        {"failure": outcome.failure}
        if outcome.link is None
        else {"provider": outcome.link.provider, "url": outcome.link.url}
    )
    async with database.begin() as connection:
        await record_action(
            connection,
            operator=operator,
            action="order.payment_link",
            target=number.upper(),
            after=after,
            address=address,
            now=now,
        )
    return outcome
