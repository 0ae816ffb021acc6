"""``reconcile``: ask the payment providers what they know, and apply what we lacked (#17)."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import click

from whatsorder.cli.database import with_engine
from whatsorder.settings import Settings

if TYPE_CHECKING:
    from whatsorder.reconciliation import ReconcileRun


@click.command()
@click.option("--dry-run", is_flag=True, help="Only say what a run would do; change nothing.")
def reconcile(dry_run: bool) -> None:
    """Sweep every configured provider's payments and refunds of the last
    WHATSORDER_RECONCILE_LOOKBACK_HOURS, up to WHATSORDER_RECONCILE_GRACE_MINUTES ago, and
    apply what the webhooks did not bring: each payment credits once, each refund reverses
    once, and a payment for no order of ours (or another amount) becomes an exception.

    Exits 1 when a provider could not be asked.
    """
    from whatsorder.providers.links.configured import PaymentSettingsMissing

    settings = Settings()
    try:
        run = asyncio.run(_reconcile(settings, dry_run))
    except PaymentSettingsMissing as missing:
        click.echo(f"error: {missing}", err=True)
        sys.exit(2)
    window = f"{run.since:%Y-%m-%d %H:%M} to {run.until:%Y-%m-%d %H:%M} UTC"
    if run.skipped is not None:
        click.echo(f"reconcile skipped: {run.skipped}")
        _awaiting(run)
        return
    for report in run.reports:
        counts = ", ".join(f"{verdict} {count}" for verdict, count in sorted(report.tally.items()))
        heading = "dry run, " if dry_run else ""
        click.echo(
            f"{heading}{report.provider}, {window}: {report.found} found ({counts or 'none'})"
        )
        for line in report.lines:
            click.echo(f"  {line}")
    for provider, reason in run.failures.items():
        click.echo(f"{provider}: not swept: {reason}", err=True)
    _awaiting(run)
    if dry_run:
        click.echo("dry run: nothing was changed")
    if run.failures:
        sys.exit(1)


def _awaiting(run: ReconcileRun) -> None:
    """The orders still unpaid that were placed before the window's end."""
    from whatsorder.ordering.model import order_number
    from whatsorder.ordering.replies import money

    click.echo(
        f"orders awaiting payment, placed before {run.until:%Y-%m-%d %H:%M} UTC: "
        f"{run.awaiting_count}"
    )
    for order in run.awaiting:
        link = f"{order['provider']} link {order['url']}" if order["url"] else "no payment link"
        click.echo(
            f"  {order_number(order['id'])} {money(order['total'], order['currency'])}, "
            f"placed {order['created_at']:%Y-%m-%d %H:%M}: {link}"
        )
    if run.awaiting_count > len(run.awaiting):
        click.echo(f"  … and {run.awaiting_count - len(run.awaiting)} more")


async def _reconcile(settings: Settings, dry_run: bool) -> ReconcileRun:
    from whatsorder.reconciliation import run_reconcile

    return await with_engine(
        settings.database_url, lambda engine: run_reconcile(engine, settings, dry_run=dry_run)
    )
