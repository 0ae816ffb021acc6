"""The payment-link maker and the payment sources the settings ask for.

A provider named without its keys is a setting error, said in one line when the service or
the CLI starts, never a link that fails for every customer.
"""

from __future__ import annotations

from whatsorder.ordering.link_ports import PaymentLinks
from whatsorder.ordering.reconcile_ports import PaymentSource
from whatsorder.providers.links.development import DevelopmentLinks
from whatsorder.providers.links.razorpay_links import RazorpayLinks
from whatsorder.providers.links.stripe_links import StripeLinks
from whatsorder.providers.sweeps.razorpay_sweep import RazorpaySweep
from whatsorder.providers.sweeps.stripe_sweep import StripeSweep
from whatsorder.settings import Settings, secret

# A link is made while a customer's message waits for its answer (Twilio waits 15 s), inside
# the message's transaction: each try is bounded, and so is the number of tries. On SQLite that
# transaction holds the one writer's lock, so every other webhook waits for the provider: there
# the whole call is cut at 3 s, well inside the other writers' wait for the lock (5 s by
# default): a slow provider gets "try again in a minute", and the retry is given the link the
# provider made meanwhile. A quick retry (Stripe's 409 while a concurrent request with the same
# key is in flight) still fits.
LINK_TIMEOUT_SECONDS = 4.0
LINK_RETRIES = 1
SQLITE_LINK_BUDGET_SECONDS = 3.0


class PaymentSettingsMissing(ValueError):
    """A payment provider is named without what it needs."""


def payment_links(settings: Settings) -> PaymentLinks | None:
    """The link maker ``WHATSORDER_PAYMENT_LINK_PROVIDER`` names; None when it names none."""
    provider = settings.payment_link_provider
    if provider == "":
        return None
    if provider == "development":
        return DevelopmentLinks(settings.public_url)
    budget = SQLITE_LINK_BUDGET_SECONDS if settings.database_url.startswith("sqlite") else None
    if provider == "stripe":
        return StripeLinks(
            _stripe_key(settings),
            success_url=settings.payment_success_url or settings.public_url_for("/paid"),
            api_base=settings.stripe_api_url,
            timeout=LINK_TIMEOUT_SECONDS,
            max_network_retries=LINK_RETRIES,
            budget=budget,
        )
    key_id, key_secret = _razorpay_keys(settings)
    return RazorpayLinks(
        key_id,
        key_secret,
        api_base=settings.razorpay_api_url,
        timeout=LINK_TIMEOUT_SECONDS,
        attempts=LINK_RETRIES + 1,
        budget=budget,
    )


def payment_sources(settings: Settings) -> list[PaymentSource]:
    """Every provider whose API keys are set: the sweep asks each."""
    sources: list[PaymentSource] = []
    if secret(settings.stripe_api_key):
        sources.append(StripeSweep(_stripe_key(settings), api_base=settings.stripe_api_url))
    if settings.razorpay_key_id or secret(settings.razorpay_key_secret):
        key_id, key_secret = _razorpay_keys(settings)
        sources.append(RazorpaySweep(key_id, key_secret, api_base=settings.razorpay_api_url))
    return sources


def _stripe_key(settings: Settings) -> str:
    key = secret(settings.stripe_api_key)
    if key is None:
        raise PaymentSettingsMissing(
            "WHATSORDER_STRIPE_API_KEY is not set: Stripe payment links and the sweep need it"
        )
    return key


def _razorpay_keys(settings: Settings) -> tuple[str, str]:
    key_secret = secret(settings.razorpay_key_secret)
    if not settings.razorpay_key_id or key_secret is None:
        raise PaymentSettingsMissing(
            "WHATSORDER_RAZORPAY_KEY_ID and WHATSORDER_RAZORPAY_KEY_SECRET must both be set for "
            "Razorpay payment links and the sweep"
        )
    return settings.razorpay_key_id, key_secret
