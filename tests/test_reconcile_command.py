"""``whatsorder reconcile [--dry-run]`` as an operator runs it: the providers' SDKs against fake
APIs on 127.0.0.1, a real database, and what the command prints and exits with (issue #17)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fake_graph import serving
from fake_payment_apis import RAZORPAY_KEY, STRIPE_KEY, FakePaymentApis
from whatsorder.cli import commands
from whatsorder.cli.database import with_engine
from whatsorder.clock import utcnow
from whatsorder.db.tables import ledger_entries
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering.model import InboundMessage
from whatsorder.ordering.services import receive_message
from whatsorder.providers.sweeps.stripe_sweep import StripeSweep
from whatsorder.reconciliation import ReconcileScheduler
from whatsorder.schedules import cron_schedule
from whatsorder.settings import Settings

CUSTOMER = "whatsapp:+919800000011"
ATTA = 26_500  # one ATTA-5KG, the demo catalogue's price


@pytest.fixture
def fake() -> Iterator[tuple[FakePaymentApis, str]]:
    apis = FakePaymentApis()
    with serving(apis.app) as base:
        yield apis, base


def _run(database_url: str, *args: str, **env: str) -> Result:
    environment = {"WHATSORDER_DATABASE_URL": database_url, **env}
    return CliRunner().invoke(commands, ["reconcile", *args], env=environment)


def _keys(base: str, *, stripe_key: str = STRIPE_KEY) -> dict[str, str]:
    return {
        "WHATSORDER_STRIPE_API_KEY": stripe_key,
        "WHATSORDER_STRIPE_API_URL": base,
        "WHATSORDER_RAZORPAY_KEY_ID": RAZORPAY_KEY[0],
        "WHATSORDER_RAZORPAY_KEY_SECRET": RAZORPAY_KEY[1],
        "WHATSORDER_RAZORPAY_API_URL": base,
    }


def _orders(database_url: str) -> list[str]:
    """Two orders of one ATTA-5KG each, placed by a customer: their numbers."""

    async def place(db: AsyncEngine) -> list[str]:
        placed = []
        for sid in ("SM-rec-1", "SM-rec-2"):
            message = InboundMessage("twilio", sid, CUSTOMER, "Meena", "1 x ATTA-5KG")
            outcome = await receive_message(SqlUnitOfWork(db), message, utcnow())
            assert outcome.order_id is not None
            placed.append(f"ORD-{outcome.order_id:06d}")
        return placed

    return asyncio.run(with_engine(database_url, place))


def _credits(database_url: str) -> list[str]:
    """The providers of the credits on the ledger."""

    async def read(db: AsyncEngine) -> list[str]:
        async with db.connect() as connection:
            rows = await connection.scalars(
                select(ledger_entries.c.source).where(
                    ledger_entries.c.entry_type == "payment_credit"
                )
            )
            return sorted(rows.all())

    return asyncio.run(with_engine(database_url, read))


def test_without_provider_keys_it_says_there_is_nothing_to_ask_and_what_awaits_payment(
    database_url: str,
) -> None:
    result = _run(database_url)
    assert result.exit_code == 0, result.output
    assert "reconcile skipped: no payment provider's API keys are set" in result.output
    assert "orders awaiting payment, placed before" in result.output
    assert result.output.rstrip().endswith(": 0")

    async def place_two_hours_ago(db: AsyncEngine) -> None:
        message = InboundMessage("twilio", "SM-old", CUSTOMER, "Meena", "1 x ATTA-5KG")
        await receive_message(SqlUnitOfWork(db), message, utcnow() - timedelta(hours=2))

    asyncio.run(with_engine(database_url, place_two_hours_ago))
    dry = _run(database_url, "--dry-run")
    assert ": 1\n  ORD-000001 ₹265.00, placed " in dry.output
    assert dry.output.rstrip().endswith(": no payment link")


def test_a_provider_named_without_all_its_keys_is_one_clear_error(database_url: str) -> None:
    environment = {
        **os.environ,
        "WHATSORDER_DATABASE_URL": database_url,
        "WHATSORDER_RAZORPAY_KEY_ID": "rzp_test_only_the_id",
    }
    result = subprocess.run(
        [sys.executable, "-m", "whatsorder", "reconcile"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: WHATSORDER_RAZORPAY_KEY_ID and WHATSORDER_RAZORPAY_KEY_SECRET go together: "
        "set both, or neither"
    )


def test_a_dry_run_says_what_it_would_credit_and_the_run_credits_it_once(
    database_url: str, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    first, second = _orders(database_url)
    an_hour_ago = int(time.time()) - 3600
    total = ATTA
    apis.pay("stripe", first, total, created=an_hour_ago)
    apis.pay("razorpay", second, total, created=an_hour_ago)
    apis.pay("razorpay", second, total, created=int(time.time()) - 60)  # within the grace

    dry = _run(database_url, "--dry-run", **_keys(base))
    assert dry.exit_code == 0, dry.output
    assert "dry run, stripe" in dry.output
    assert f"for {first}: would_credit" in dry.output
    assert f"for {second}: would_credit" in dry.output
    assert "nothing was changed" in dry.output
    assert _credits(database_url) == []

    real = _run(database_url, **_keys(base))
    assert real.exit_code == 0, real.output
    assert "stripe" in real.output
    assert "1 found (credited 1)" in real.output
    assert _credits(database_url) == ["razorpay", "stripe"]  # the young one left to its webhook
    again = _run(database_url, **_keys(base))
    assert "already_credited 1" in again.output
    assert _credits(database_url) == ["razorpay", "stripe"]


def test_a_provider_that_refuses_is_reported_and_the_others_are_still_swept(
    database_url: str, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    _, second = _orders(database_url)
    apis.pay("razorpay", second, ATTA, created=int(time.time()) - 3600)
    result = _run(database_url, **_keys(base, stripe_key="sk_test_wrong"))
    assert result.exit_code == 1
    assert "stripe: not swept: Stripe refused (HTTP 401)" in result.output
    assert "Invalid API Key provided" in result.output
    assert "razorpay" in result.output
    assert _credits(database_url) == ["razorpay"]


async def test_the_service_sweeps_on_its_schedule(
    database_url: str, db: AsyncEngine, fake: tuple[FakePaymentApis, str]
) -> None:
    apis, base = fake
    message = InboundMessage("twilio", "SM-scheduled", CUSTOMER, "Meena", "1 x ATTA-5KG")
    outcome = await receive_message(SqlUnitOfWork(db), message, utcnow())
    number = f"ORD-{outcome.order_id:06d}"
    apis.pay("stripe", number, ATTA, created=int(time.time()) - 3600)
    settings = Settings(
        database_url=database_url,
        reconcile_schedule="* * * * *",
        stripe_api_key=STRIPE_KEY,
        stripe_api_url=base,
    )
    scheduler = ReconcileScheduler.from_settings(db, settings)
    assert scheduler is not None
    assert ReconcileScheduler.from_settings(db, Settings(database_url=database_url)) is None
    fast = ReconcileScheduler(
        db,
        settings,
        [StripeSweep(STRIPE_KEY, api_base=base)],
        cron_schedule("* * * * *"),
        clock=lambda: utcnow() + timedelta(seconds=(time.monotonic() - began) * 600),
        poll_seconds=0.01,
    )
    began = time.monotonic()
    fast.start()
    try:
        for _ in range(400):  # 20 s at most
            if "stripe" in await _credits_in(db):
                break
            await asyncio.sleep(0.05)
    finally:
        await fast.stop()
    assert await _credits_in(db) == ["stripe"]


async def _credits_in(db: AsyncEngine) -> list[str]:
    async with db.connect() as connection:
        rows = await connection.scalars(
            select(ledger_entries.c.source).where(ledger_entries.c.entry_type == "payment_credit")
        )
        return sorted(rows.all())
