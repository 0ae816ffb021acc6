"""``payment-link ORD-…``: an operator's payment link for an order (issue #17)."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TYPE_CHECKING

import click

from whatsorder.cli.database import with_engine
from whatsorder.settings import Settings

if TYPE_CHECKING:
    from whatsorder.ordering.services.payment_links import LinkOutcome


@click.command(name="payment-link")
@click.argument("order_number")
@click.option("--as", "actor", help="Who asks, for the audit trail [default: cli:<user>].")
def payment_link(order_number: str, actor: str | None) -> None:
    """Make (or find) the payment link for ORDER_NUMBER's outstanding amount with the provider
    WHATSORDER_PAYMENT_LINK_PROVIDER names; one per order, amount and provider, however often
    it is asked. Exits 1 when no link was made, saying why (the provider's own message when it
    refused)."""
    settings = Settings()
    outcome = asyncio.run(_make(settings, order_number, actor or f"cli:{getpass.getuser()}"))
    if outcome.link is not None:
        click.echo(f"{outcome.link.provider} link for {order_number.upper()}: {outcome.link.url}")
        return
    click.echo(f"no payment link: {outcome.failure or outcome.reply}", err=True)
    sys.exit(1)


async def _make(settings: Settings, number: str, actor: str) -> LinkOutcome:
    from whatsorder.clock import utcnow
    from whatsorder.db.console_payment_links import operator_payment_link
    from whatsorder.providers.links.configured import payment_links

    links = payment_links(settings)
    return await with_engine(
        settings.database_url,
        lambda engine: operator_payment_link(engine, links, number, actor, utcnow()),
    )
