"""``cleanup``: delete expired idempotency records now, batch by batch, stoppable by a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from whatsorder.cli.database import with_engine
from whatsorder.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from whatsorder.scheduler import CleanupRun


@click.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    help=(
        "Rows per transaction [default: WHATSORDER_CLEANUP_BATCH_SIZE, else 1000 on SQLite, "
        "5000 on PostgreSQL]."
    ),
)
def cleanup(dry_run: bool, batch_size: int | None) -> None:
    """Delete expired idempotency records and long-dead claims now, in short batches.

    SIGTERM or Ctrl-C stops it after the batch in progress: nothing is left half-deleted, and
    running it again finishes the job.
    """
    settings = Settings()
    run = asyncio.run(
        _cleanup(
            settings.database_url,
            batch_size or settings.cleanup_batch_size,
            dry_run,
            settings.dead_letter_payload_days,
        )
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
            f"{run.stale_removed} stale claims removed in {seconds} ({run.batches} batches); "
            f"{run.payloads_cleared} dead letters' re-drive payloads past their retention dropped"
        )
        if run.outcome == "stopped":
            click.echo("stopped before the end: run it again to finish")


async def _cleanup(
    url: str, batch_size: int | None, dry_run: bool, payload_days: int
) -> CleanupRun:
    """A dry run first (it sizes the progress); then, unless only that was asked, the real run."""
    from whatsorder.scheduler import run_cleanup

    async def estimate_then_delete(engine: AsyncEngine) -> CleanupRun:
        estimate = await run_cleanup(engine, trigger="cli", batch_size=batch_size, dry_run=True)
        if dry_run or estimate.outcome == "failed":
            return estimate
        with _stopped_by_signals() as stop, _progress(estimate) as on_batch:
            return await run_cleanup(
                engine,
                trigger="cli",
                batch_size=batch_size,
                stop=stop,
                on_batch=on_batch,
                payload_days=payload_days,
            )

    return await with_engine(url, estimate_then_delete)


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
