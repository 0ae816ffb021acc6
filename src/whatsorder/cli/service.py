"""Running the service: ``serve`` the webhooks, ``migrate`` the schema, ``seed-demo``."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile

import click

from whatsorder.settings import Settings


@click.command()
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

    Settings()  # a bad setting stops here as one clear line, not in every worker
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


@click.command()
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


@click.command("seed-demo")
def seed_demo() -> None:
    """Load the demo catalogue (products already present keep their stock)."""
    from whatsorder.db.seed import seed_demo as load

    added = asyncio.run(load(Settings().database_url))
    click.echo(f"demo catalogue loaded ({added} new products)")
