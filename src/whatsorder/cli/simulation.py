"""Trying the service by hand: ``send`` a customer's message, ``pay`` an order.

Requests are signed exactly as each provider signs them (``whatsorder.simulate``), with the
secret given, else the one the service is configured with, else the development one.
"""

from __future__ import annotations

import asyncio
import sys
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import click
import httpx

from whatsorder.cli.database import with_connection
from whatsorder.settings import Settings, secret

if TYPE_CHECKING:
    from whatsorder.simulate import SignedRequest


@click.command()
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
    key = _signing_secret(provider, token, settings)
    if provider == "meta":
        request = simulate.meta_message(
            base, text, sender=sender, name=name, app_secret=key, wamid=message_id
        )
    else:
        request = simulate.twilio_message(
            base, text, sender=sender, name=name, auth_token=key, sid=message_id
        )
    response = _post(request)
    replayed = " (replayed)" if response.headers.get("idempotent-replayed") == "true" else ""
    click.echo(f"HTTP {response.status_code}{replayed}  message id {request.message_id}", err=True)
    if provider == "meta" and response.status_code == 200:
        click.echo(f"accepted: {response.text}; the reply waits in the outbox for the Graph API")
    else:
        click.echo(_reply_text(response))
    if response.status_code >= 400:
        sys.exit(1)


@click.command()
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
    from whatsorder.db.listings import order_total
    from whatsorder.ordering.model import order_id_from_number

    settings = Settings()
    order_id = order_id_from_number(order_number)
    if order_id is None:
        raise click.ClickException(f"{order_number!r} is not an order number like ORD-000001")
    found = asyncio.run(with_connection(settings.database_url, lambda c: order_total(c, order_id)))
    if found is None and amount is None:
        raise click.ClickException(f"no order {order_number} in the database; give --amount")
    total, currency = found or (amount or 0, "INR")
    base = base_url or settings.public_url
    key = _signing_secret(provider, webhook_secret, settings)
    payment = simulate.stripe_payment if provider == "stripe" else simulate.razorpay_payment
    request = payment(base, order_number.upper(), amount or total, currency, secret=key)
    response = _post(request)
    click.echo(f"HTTP {response.status_code}  event {request.message_id}", err=True)
    click.echo(response.text)
    if response.status_code >= 400:
        sys.exit(1)


def _signing_secret(provider: str, given: str | None, settings: Settings) -> str:
    """The secret given on the command line, else the service's setting, else development's."""
    from whatsorder.simulate import DEVELOPMENT_SECRETS

    configured = {
        "twilio": settings.twilio_auth_token,
        "meta": settings.meta_app_secret,
        "stripe": settings.stripe_webhook_secret,
        "razorpay": settings.razorpay_webhook_secret,
    }[provider]
    return given or secret(configured) or DEVELOPMENT_SECRETS[provider]


def _post(request: SignedRequest) -> httpx.Response:
    """Post the signed request to the server; an unreachable server is one clear error."""
    try:
        return httpx.post(request.url, content=request.body, headers=request.headers, timeout=20)
    except httpx.HTTPError as error:
        raise click.ClickException(f"could not reach {request.url}: {error}") from error


def _reply_text(response: httpx.Response) -> str:
    """The reply's text: the TwiML messages' bodies, or the body as it came."""
    if "xml" not in response.headers.get("content-type", ""):
        return response.text
    try:
        root = ET.fromstring(response.content)  # noqa: S314 (our own server's TwiML)
    except ET.ParseError:
        return response.text
    return "\n".join(message.text or "" for message in root.iter("Message")) or "(no reply)"
