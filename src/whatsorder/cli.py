"""``whatsorder``: the operator's command line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
import httpx

from whatsorder.ordering.replies import money
from whatsorder.settings import Settings, secret

if TYPE_CHECKING:
    from whatsorder.scheduler import CleanupRun

T = TypeVar("T")


@click.group()
def commands() -> None:
    """whatsorder: WhatsApp orders whose webhooks take effect exactly once."""


def main() -> None:
    """The console script: a bad setting is one clear line, not a traceback."""
    from pydantic import ValidationError

    try:
        commands()
    except ValidationError as error:
        for problem in error.errors():
            name = "WHATSORDER_" + "_".join(str(part) for part in problem["loc"]).upper()
            click.echo(f"error: {name}: {problem['msg']}", err=True)
        sys.exit(2)


@commands.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    envvar="WHATSORDER_LOG_FORMAT",
    help="auto: JSON lines unless stdout is a terminal [env: WHATSORDER_LOG_FORMAT].",
)
@click.option(
    "--graceful-timeout",
    type=click.IntRange(1, 3600),
    default=20,
    show_default=True,
    envvar="WHATSORDER_GRACEFUL_TIMEOUT_SECONDS",
    help="On SIGTERM: stop accepting connections, give requests in flight this many seconds "
    "to finish, then cancel them (their transactions roll back) "
    "[env: WHATSORDER_GRACEFUL_TIMEOUT_SECONDS].",
)
def serve(host: str, port: int, workers: int, log_format: str, graceful_timeout: int) -> None:
    """Serve the webhooks (uvicorn). Settings come from WHATSORDER_* variables.

    SIGTERM drains: the port closes at once (a proxy sends new requests to another replica),
    requests in flight finish within --graceful-timeout, then the cleanup job stops after its
    batch and the last statistics are written. Nothing half-done is kept: a cancelled request's
    transaction rolls back and the provider's retry processes it afresh.
    """
    import uvicorn

    # Workers share no memory: each writes its metrics to files here, /metrics adds them up.
    # prometheus_client reads the variable on import, so it is set before anything imports it.
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="whatsorder-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from whatsorder import observability

    try:
        uvicorn.run(
            "whatsorder.web.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=False,  # X-Forwarded-* is trusted only from WHATSORDER_TRUSTED_PROXIES
            timeout_graceful_shutdown=graceful_timeout,
            log_config=observability.logging_config(
                json={"auto": None, "json": True, "text": False}[log_format]
            ),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@commands.command()
@click.option(
    "--check", is_flag=True, help="Only tell whether the schema is current (exit 1 if not)."
)
@click.option(
    "--revision",
    help="Move to this revision instead of the newest: an id (0002), head, base, or a step "
    "(-1). Down is a rollback: it drops what the later migrations added, rows included.",
)
def migrate(check: bool, revision: str | None) -> None:
    """Bring the database schema up to date (Alembic), or to --revision."""
    from whatsorder.db import migrate as migrations

    url = Settings().database_url
    if check and revision is not None:
        raise click.UsageError("--check compares with the newest revision; leave out --revision")
    if revision is not None:
        try:
            now = migrations.move_to(url, revision)
        except ValueError as error:
            raise click.ClickException(str(error)) from error
        head = migrations.head_revision(url)
        if now == head:
            click.echo(f"schema current ({head})")
        else:
            click.echo(f"schema at {now or 'nothing'}; the code expects {head}")
        return
    if check:
        current = asyncio.run(migrations.current_revision(url))
        head = migrations.head_revision(url)
        if current != head:
            click.echo(f"schema at {current or 'nothing'}; code expects {head}", err=True)
            sys.exit(1)
        click.echo(f"schema current ({head})")
        return
    migrations.upgrade(url)
    click.echo(f"schema current ({migrations.head_revision(url)})")


@commands.command("seed-demo")
def seed_demo() -> None:
    """Load the demo catalogue (products already present keep their stock)."""
    from whatsorder.db.seed import seed_demo as load

    added = asyncio.run(load(Settings().database_url))
    click.echo(f"demo catalogue loaded ({added} new products)")


@commands.command()
@click.argument("text")
@click.option(
    "--provider",
    type=click.Choice(["twilio", "meta"]),
    default="twilio",
    show_default=True,
    help="Which provider's webhook to post to, signed as that provider signs.",
)
@click.option("--url", "base_url", help="The server's public URL [default: WHATSORDER_PUBLIC_URL].")
@click.option("--from", "sender", default="whatsapp:+919800000001", show_default=True)
@click.option("--name", default="Demo Kirana Store", show_default=True)
@click.option(
    "--message-sid",
    "--message-id",
    "message_id",
    help="Reuse a MessageSid (Twilio) or wamid (Meta) to see a replay [default: a new one].",
)
@click.option(
    "--token",
    help="Twilio auth token or Meta app secret [default: from WHATSORDER_*, else development].",
)
def send(
    text: str,
    provider: str,
    base_url: str | None,
    sender: str,
    name: str,
    message_id: str | None,
    token: str | None,
) -> None:
    """Send TEXT as a customer's WhatsApp message and print the reply."""
    from whatsorder import simulate

    settings = Settings()
    base = base_url or settings.public_url
    if provider == "meta":
        app_secret = (
            token or secret(settings.meta_app_secret) or simulate.DEVELOPMENT_META_APP_SECRET
        )
        request = simulate.meta_message(
            base, text, sender=sender, name=name, app_secret=app_secret, wamid=message_id
        )
    else:
        auth_token = (
            token or secret(settings.twilio_auth_token) or simulate.DEVELOPMENT_TWILIO_AUTH_TOKEN
        )
        request = simulate.twilio_message(
            base, text, sender=sender, name=name, auth_token=auth_token, sid=message_id
        )
    try:
        response = httpx.post(
            request.url, content=request.body, headers=request.headers, timeout=20
        )
    except httpx.HTTPError as error:
        raise click.ClickException(f"could not reach {request.url}: {error}") from error
    replayed = " (replayed)" if response.headers.get("idempotent-replayed") == "true" else ""
    click.echo(f"HTTP {response.status_code}{replayed}  message id {request.message_id}", err=True)
    if provider == "meta" and response.status_code == 200:
        click.echo(f"accepted: {response.text}; the reply waits in the outbox for the Graph API")
    else:
        click.echo(_reply_text(response))
    if response.status_code >= 400:
        sys.exit(1)


def _reply_text(response: httpx.Response) -> str:
    if "xml" not in response.headers.get("content-type", ""):
        return response.text
    try:
        root = ET.fromstring(response.content)  # noqa: S314 (our own server's TwiML)
    except ET.ParseError:
        return response.text
    return "\n".join(message.text or "" for message in root.iter("Message")) or "(no reply)"


async def _with_connection(url: str, work: Callable[..., Awaitable[T]]) -> T:
    from whatsorder.db.engine import open_database

    engine = open_database(url)
    try:
        async with engine.connect() as connection:
            return await work(connection)
    finally:
        await engine.dispose()


@commands.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def orders(limit: int, as_json: bool) -> None:
    """The most recent orders."""
    from whatsorder.db import reports

    rows = asyncio.run(
        _with_connection(Settings().database_url, lambda c: reports.recent_orders(c, limit=limit))
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no orders yet")
        return
    header = f"{'order':<12} {'status':<10} {'total':>12}  {'retailer':<24} {'created':<20}"
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        total = money(row["total"], row["currency"])
        created = (row["created_at"] or "")[:19]
        retailer = row["retailer"][:24]
        click.echo(f"{row['number']:<12} {row['status']:<10} {total:>12}  {retailer:<24} {created}")


@commands.command()
def audit() -> None:
    """Check the invariants (stock, ledger, unique business keys); exit 1 naming each violation."""
    from whatsorder.db import reports

    problems = asyncio.run(_with_connection(Settings().database_url, reports.audit))
    if problems:
        for problem in problems:
            click.echo(f"VIOLATION: {problem}")
        click.echo(f"audit failed: {len(problems)} violation(s)", err=True)
        sys.exit(1)
    click.echo("audit passed: stock, ledger and business keys are consistent")


@commands.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    help="Rows per transaction [default: WHATSORDER_CLEANUP_BATCH_SIZE, else 1000].",
)
def cleanup(dry_run: bool, batch_size: int | None) -> None:
    """Delete expired idempotency records and long-dead claims now, in short batches.

    SIGTERM or Ctrl-C stops it after the batch in progress: nothing is left half-deleted, and
    running it again finishes the job.
    """
    settings = Settings()
    run = asyncio.run(
        _cleanup(settings.database_url, batch_size or settings.cleanup_batch_size, dry_run)
    )
    seconds = f"{run.seconds:.2f} s"
    if run.outcome == "failed":
        click.echo(f"cleanup failed: {run.detail}", err=True)
        sys.exit(1)
    if run.outcome == "skipped":
        click.echo("cleanup skipped: another replica is cleaning (it holds the cleanup lock)")
    elif dry_run:
        click.echo(
            f"dry run: {run.rows_deleted} expired rows and {run.stale_removed} stale claims "
            f"would be deleted ({seconds}); nothing was changed"
        )
    else:
        click.echo(
            f"cleanup {run.outcome}: {run.rows_deleted} expired rows deleted, "
            f"{run.stale_removed} stale claims removed in {seconds} ({run.batches} batches)"
        )
        if run.outcome == "stopped":
            click.echo("stopped before the end: run it again to finish")


async def _cleanup(url: str, batch_size: int, dry_run: bool) -> CleanupRun:
    from whatsorder.db.engine import open_database
    from whatsorder.scheduler import run_cleanup

    engine = open_database(url)
    try:
        estimate = await run_cleanup(engine, trigger="cli", batch_size=batch_size, dry_run=True)
        if dry_run or estimate.outcome == "failed":
            return estimate
        with _stopped_by_signals() as stop, _progress(estimate) as on_batch:
            return await run_cleanup(
                engine, trigger="cli", batch_size=batch_size, stop=stop, on_batch=on_batch
            )
    finally:
        await engine.dispose()


@contextmanager
def _stopped_by_signals() -> Iterator[asyncio.Event]:
    """An event SIGTERM or SIGINT sets; a second signal does what it would have done anyway."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)

    def request_stop() -> None:
        click.echo("stopping after the batch in progress…", err=True)
        stop.set()
        for number in signals:
            loop.remove_signal_handler(number)

    for number in signals:
        loop.add_signal_handler(number, request_stop)
    try:
        yield stop
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


@contextmanager
def _progress(estimate: CleanupRun) -> Iterator[Callable[[int], None]]:
    """Per batch: a progress bar on a terminal, a plain line otherwise (logs, CI, pipes)."""
    total = estimate.rows_deleted + estimate.stale_removed
    if sys.stdout.isatty():
        with click.progressbar(length=total, label="deleting", show_pos=True) as bar:
            yield bar.update
        return
    done = 0

    def line(count: int) -> None:
        nonlocal done
        done += count
        click.echo(f"batch: {count} rows deleted, {done} of about {total}")

    yield line


@commands.command()
@click.option("--json", "as_json", is_flag=True, help="Everything, as JSON.")
def stats(as_json: bool) -> None:
    """Idempotency statistics: records, replays, conflicts, mismatches, size, last cleanup."""
    from whatsorder import statistics
    from whatsorder.db.engine import open_database

    async def collect() -> dict[str, Any]:
        engine = open_database(Settings().database_url)
        try:
            return await statistics.report(engine)
        finally:
            await engine.dispose()

    figures = asyncio.run(collect())
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


@commands.command()
@click.argument("order_number")
@click.option(
    "--provider", type=click.Choice(["stripe", "razorpay"]), default="stripe", show_default=True
)
@click.option("--amount", type=int, help="In minor units (paise) [default: the order's total].")
@click.option("--url", "base_url", help="The server's public URL [default: WHATSORDER_PUBLIC_URL].")
@click.option(
    "--secret", "webhook_secret", help="Webhook secret [default: WHATSORDER_*, else dev]."
)
def pay(
    order_number: str,
    provider: str,
    amount: int | None,
    base_url: str | None,
    webhook_secret: str | None,
) -> None:
    """Pay ORDER_NUMBER through the provider's webhook, signed as the provider signs it."""
    from whatsorder import simulate
    from whatsorder.db.tables import orders
    from whatsorder.ordering.model import order_id_from_number

    settings = Settings()
    order_id = order_id_from_number(order_number)
    if order_id is None:
        raise click.ClickException(f"{order_number!r} is not an order number like ORD-000001")

    async def order_total(connection: Any) -> tuple[int, str] | None:
        from sqlalchemy import select

        row = (
            await connection.execute(
                select(orders.c.total, orders.c.currency).where(orders.c.id == order_id)
            )
        ).first()
        return None if row is None else (int(row.total), str(row.currency))

    found = asyncio.run(_with_connection(settings.database_url, order_total))
    if found is None and amount is None:
        raise click.ClickException(f"no order {order_number} in the database; give --amount")
    total, currency = found or (amount or 0, "INR")
    base = base_url or settings.public_url
    if provider == "stripe":
        key = (
            webhook_secret
            or secret(settings.stripe_webhook_secret)
            or simulate.DEVELOPMENT_STRIPE_SECRET
        )
        request = simulate.stripe_payment(
            base, order_number.upper(), amount or total, currency, secret=key
        )
    else:
        key = (
            webhook_secret
            or secret(settings.razorpay_webhook_secret)
            or simulate.DEVELOPMENT_RAZORPAY_SECRET
        )
        request = simulate.razorpay_payment(
            base, order_number.upper(), amount or total, currency, secret=key
        )
    try:
        response = httpx.post(
            request.url, content=request.body, headers=request.headers, timeout=20
        )
    except httpx.HTTPError as error:
        raise click.ClickException(f"could not reach {request.url}: {error}") from error
    click.echo(f"HTTP {response.status_code}  event {request.message_id}", err=True)
    click.echo(response.text)
    if response.status_code >= 400:
        sys.exit(1)
