"""The service's settings: read once from the environment (prefix ``WHATSORDER_``), passed down."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal

from cronsim import CronSim, CronSimError
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from whatsorder.outbound.templates import TemplateCatalogue, load_templates

DEFAULT_DATABASE_URL = "sqlite:///./var/whatsorder.db"


class Settings(BaseSettings):
    """Everything the service can be told. The names are a contract that deployments and
    outside tools rely on (README, docs/quick-reference.md): add, never rename."""

    model_config = SettingsConfigDict(env_prefix="WHATSORDER_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"

    twilio_auth_token: SecretStr | None = None
    meta_app_secret: SecretStr | None = None
    meta_verify_token: SecretStr | None = None
    # Replies to Meta users go out through the Graph API from the outbox (unset: kept pending).
    meta_access_token: SecretStr | None = None
    meta_phone_number_id: str | None = None
    meta_graph_url: str = "https://graph.facebook.com/v21.0"
    # Replies and notifications to Twilio users go out through Twilio's Messages API, from
    # this WhatsApp sender (``whatsapp:+…``), with twilio_auth_token (unset: kept pending).
    twilio_account_sid: str | None = None
    twilio_whatsapp_from: str | None = None
    twilio_api_url: str = "https://api.twilio.com"
    # The approved templates notifications go out as outside WhatsApp's 24-hour window: a JSON
    # file (deploy/notification-templates.example.json). Unset: none, so such notifications
    # are held with the reason.
    notification_templates: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    razorpay_webhook_secret: SecretStr | None = None
    # Payment links and the reconciliation sweep (issue #17). The provider that makes links:
    # stripe, razorpay, development (links to this service's own page, for make run), or
    # empty (PAY answers that links are not set up). The API URLs point tests at fakes.
    payment_link_provider: Literal["", "stripe", "razorpay", "development"] = ""
    stripe_api_key: SecretStr | None = None
    stripe_api_url: str | None = None
    razorpay_key_id: str | None = None
    razorpay_key_secret: SecretStr | None = None
    razorpay_api_url: str | None = None
    # Where Stripe Checkout sends the customer after paying (default: PUBLIC_URL + /paid).
    payment_success_url: str | None = None
    # The sweep asks each configured provider about the payments and refunds of the last
    # lookback hours, leaving those younger than the grace minutes to their webhooks.
    reconcile_schedule: str = "*/15 * * * *"  # cron, in UTC; empty disables
    reconcile_lookback_hours: int = Field(default=72, ge=1, le=24 * 90)
    reconcile_grace_minutes: int = Field(default=15, ge=0, le=24 * 60)
    admin_token: SecretStr | None = None
    # Signs the operator console's session cookies; unset, /console answers 503 and says so.
    console_secret: SecretStr | None = None

    idempotency_ttl_seconds: int = Field(default=86_400, ge=1)
    idempotency_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    store_request_bodies: bool = False
    cleanup_schedule: str = "0 * * * *"  # cron, in UTC; empty disables
    cleanup_batch_size: int | None = Field(default=None, ge=1, le=100_000)  # None: by database
    # A dead letter keeps the delivery it came in (unredacted, never shown) so an operator can
    # re-drive it; the cleanup drops it after this many days (and a done re-drive at once).
    dead_letter_payload_days: int = Field(default=30, ge=1, le=3650)

    rate_limit_per_sender: str = "60/minute"
    rate_limit_per_ip: str = "1200/minute"
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    require_https: bool = True

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # A body must arrive within this; a client that stalls is answered 408 and let go.
    body_read_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # A webhook waiting this long for a connection is answered 503 (the provider retries).
    # Waiting for the first copy of a duplicate (idempotency_wait_seconds) may follow, and a
    # storm of copies queues for the CPU too: together they must stay inside Twilio's 15 s.
    db_pool_timeout_seconds: float = Field(default=3.0, gt=0)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            ip_network(entry, strict=False)  # raises ValueError naming the bad entry
        return value

    @field_validator("cleanup_schedule", "reconcile_schedule")
    @classmethod
    def _check_schedule(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        name = f"WHATSORDER_{str(info.field_name).upper()}"
        if value:
            try:
                due = next(CronSim(value, datetime.now(UTC)), None)
            except CronSimError as error:
                raise ValueError(
                    f"{name} {value!r} is not a valid cron expression "
                    f"({error}); use five fields like '0 * * * *', or empty to disable"
                ) from error
            if due is None:
                raise ValueError(f"{name} {value!r} is never due")
        return value

    @field_validator("notification_templates")
    @classmethod
    def _check_templates(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            load_templates(value)  # raises TemplatesInvalid (a ValueError) naming the place
            return value.strip()
        return None

    @model_validator(mode="after")
    def _check_payment_link_keys(self) -> Settings:
        """A link provider named without its keys fails at start, not on every PAY."""
        provider = self.payment_link_provider
        if provider == "stripe" and secret(self.stripe_api_key) is None:
            raise ValueError(
                "WHATSORDER_PAYMENT_LINK_PROVIDER is stripe but WHATSORDER_STRIPE_API_KEY is "
                "not set"
            )
        if provider == "razorpay" and not (
            self.razorpay_key_id and secret(self.razorpay_key_secret)
        ):
            raise ValueError(
                "WHATSORDER_PAYMENT_LINK_PROVIDER is razorpay but WHATSORDER_RAZORPAY_KEY_ID and "
                "WHATSORDER_RAZORPAY_KEY_SECRET are not both set"
            )
        if bool(self.razorpay_key_id) != bool(secret(self.razorpay_key_secret)):
            raise ValueError(
                "WHATSORDER_RAZORPAY_KEY_ID and WHATSORDER_RAZORPAY_KEY_SECRET go together: "
                "set both, or neither"
            )
        return self

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @cached_property
    def trusted_proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return tuple(ip_network(entry, strict=False) for entry in self.trusted_proxies)

    @cached_property
    def notification_catalogue(self) -> TemplateCatalogue:
        """The approved templates, read from ``notification_templates`` once."""
        return load_templates(self.notification_templates)

    def public_url_for(self, path: str) -> str:
        """The URL a provider called for ``path``: what it signed."""
        return self.public_url + path


def secret(value: SecretStr | None) -> str | None:
    """The plain value of an optional secret, ``None`` when unset or blank."""
    if value is None:
        return None
    plain = value.get_secret_value()
    return plain or None
