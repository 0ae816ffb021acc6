"""What an operator reads: the latest ``orders``, the ``audit`` of the books, the ``stats``."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from whatsorder.cli.database import with_connection, with_engine
from whatsorder.ordering.replies import money
from whatsorder.settings import Settings


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def orders(limit: int, as_json: bool) -> None:
    """The most recent orders."""
    from whatsorder.db.listings import recent_orders

    rows = asyncio.run(
        with_connection(Settings().database_url, lambda c: recent_orders(c, limit=limit))
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no orders yet")
        return
    header = (
        f"{'order':<12} {'status':<10} {'fulfilment':<10} {'total':>12}  {'retailer':<24} "
        f"{'created':<20}"
    )
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        total = money(row["total"], row["currency"])
        created = (row["created_at"] or "")[:19]
        retailer = row["retailer"][:24]
        click.echo(
            f"{row['number']:<12} {row['status']:<10} {row['fulfilment']:<10} {total:>12}  "
            f"{retailer:<24} {created}"
        )


@click.command()
def audit() -> None:
    """Check the invariants (stock, ledger, unique business keys); exit 1 naming each violation."""
    from whatsorder.db.audit import audit as audit_books

    problems = asyncio.run(with_connection(Settings().database_url, audit_books))
    if problems:
        for problem in problems:
            click.echo(f"VIOLATION: {problem}")
        click.echo(f"audit failed: {len(problems)} violation(s)", err=True)
        sys.exit(1)
    click.echo("audit passed: stock, ledger and business keys are consistent")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Everything, as JSON.")
def stats(as_json: bool) -> None:
    """Idempotency statistics: records, replays, conflicts, mismatches, size, last cleanup."""
    from whatsorder import statistics

    figures = asyncio.run(with_engine(Settings().database_url, statistics.report))
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    records = figures["records"]
    click.echo(f"records:            {records['total']} ({records['table_bytes'] or '?'} bytes)")
    for webhook_type, by_status in sorted(records["by_webhook_type"].items()):
        shown = ", ".join(f"{status} {count}" for status, count in sorted(by_status.items()))
        click.echo(f"  {webhook_type:<18}{shown}")
    click.echo(f"expired, to clean:  {records['expired_awaiting_cleanup']}")
    click.echo(f"oldest / newest:    {records['oldest'] or '-'} / {records['newest'] or '-'}")
    for window in ("last_hour", "last_day"):
        w = figures[window]
        rate = "-" if w["retry_hit_rate"] is None else f"{w['retry_hit_rate']:.0%}"
        click.echo(
            f"{window.replace('_', ' '):<20}{w['requests']} requests: {w['new']} new, "
            f"{w['replays']} replays, {w['conflicts']} conflicts, {w['mismatches']} mismatches, "
            f"{w['errors']} errors; retry hit rate {rate}"
        )
    dead = figures["dead_letters"]
    click.echo(f"dead letters:       {dead['total']} ({dead['last_day']} in the last day)")
    last = figures["last_cleanup"]
    if last is None:
        click.echo("last cleanup:       never")
    else:
        click.echo(
            f"last cleanup:       {last['finished_at']} {last['outcome']} ({last['trigger']}): "
            f"{last['rows_deleted']} rows, {last['stale_removed']} stale, {last['seconds']:.2f} s"
        )
