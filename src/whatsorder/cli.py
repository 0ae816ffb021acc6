"""``whatsorder``: the operator's command line."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import httpx

from whatsorder.ordering.replies import money
from whatsorder.settings import Settings, secret

T = TypeVar("T")

# The token `make run` serves with, so `whatsorder send` works against it with no set-up.
DEVELOPMENT_TWILIO_AUTH_TOKEN = "dev-twilio-auth-token"  # noqa: S105 (development only)


@click.group()
def main() -> None:
    """whatsorder: WhatsApp orders whose webhooks take effect exactly once."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
def serve(host: str, port: int, workers: int) -> None:
    """Serve the webhooks (uvicorn). Settings come from WHATSORDER_* variables."""
    import uvicorn

    uvicorn.run(
        "whatsorder.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,  # X-Forwarded-* is trusted only from WHATSORDER_TRUSTED_PROXIES
        timeout_graceful_shutdown=20,
    )


@main.command()
@click.option(
    "--check", is_flag=True, help="Only tell whether the schema is current (exit 1 if not)."
)
def migrate(check: bool) -> None:
    """Bring the database schema up to date (Alembic)."""
    from whatsorder.db import migrate as migrations

    url = Settings().database_url
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


@main.command("seed-demo")
def seed_demo() -> None:
    """Load the demo catalogue (products already present keep their stock)."""
    from whatsorder.db.seed import seed_demo as load

    added = asyncio.run(load(Settings().database_url))
    click.echo(f"demo catalogue loaded ({added} new products)")


@main.command()
@click.argument("text")
@click.option("--url", "base_url", help="The server's public URL [default: WHATSORDER_PUBLIC_URL].")
@click.option("--from", "sender", default="whatsapp:+919800000001", show_default=True)
@click.option("--name", default="Demo Kirana Store", show_default=True)
@click.option("--message-sid", help="Reuse a MessageSid to see a replay [default: a new one].")
@click.option(
    "--token", help="Twilio auth token [default: WHATSORDER_TWILIO_AUTH_TOKEN, else dev]."
)
def send(
    text: str,
    base_url: str | None,
    sender: str,
    name: str,
    message_sid: str | None,
    token: str | None,
) -> None:
    """Send TEXT as a WhatsApp message through Twilio's webhook, signed as Twilio signs it."""
    from whatsorder.providers import twilio
    from whatsorder.web.twilio import INBOUND_PATH

    settings = Settings()
    url = (base_url or settings.public_url).rstrip("/") + INBOUND_PATH
    auth_token = token or secret(settings.twilio_auth_token) or DEVELOPMENT_TWILIO_AUTH_TOKEN
    sid = message_sid or "SM" + secrets.token_hex(16)
    digits = sender.removeprefix("whatsapp:").lstrip("+")
    pairs = [
        ("MessageSid", sid),
        ("SmsMessageSid", sid),
        ("AccountSid", "AC" + "0" * 32),
        ("From", sender),
        ("To", "whatsapp:+14155238886"),
        ("WaId", digits),
        ("ProfileName", name),
        ("Body", text),
        ("NumMedia", "0"),
        ("MessageType", "text"),
        ("ApiVersion", "2010-04-01"),
    ]
    signature = twilio.sign(auth_token, url, twilio.FormParams.of(pairs))
    try:
        response = httpx.post(
            url, data=dict(pairs), headers={twilio.SIGNATURE_HEADER: signature}, timeout=20
        )
    except httpx.HTTPError as error:
        raise click.ClickException(f"could not reach {url}: {error}") from error
    replayed = " (replayed)" if response.headers.get("idempotent-replayed") == "true" else ""
    click.echo(f"HTTP {response.status_code}{replayed}  MessageSid={sid}", err=True)
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
    from whatsorder.idempotency import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await work(connection)
    finally:
        await engine.dispose()


@main.command()
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


@main.command()
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
