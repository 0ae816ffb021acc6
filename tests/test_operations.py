"""What an operator runs: migrations, the demo seed, `send`, `orders`, `audit`."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from support import TWILIO_TOKEN, free_port, running_server, server_env, whatsorder_command
from whatsorder.clock import utcnow
from whatsorder.db import migrate
from whatsorder.db.engine import open_database
from whatsorder.db.tables import ledger_entries, metadata, orders, products

TABLES = {
    "retailers",
    "products",
    "orders",
    "order_items",
    "payments",
    "ledger_entries",
    "webhook_idempotency",
}


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        whatsorder_command(*args),
        env=server_env(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _table_names(url: str) -> set[str]:
    engine = open_database(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def test_migrations_build_the_schema_from_nothing_and_take_it_down_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh/whatsorder.db"  # the folder does not exist yet
    assert cli(url, "migrate", "--check").returncode == 1  # empty database: behind
    result = cli(url, "migrate")
    assert result.returncode == 0, result.stderr
    assert asyncio.run(_table_names(url)) >= TABLES
    assert set(metadata.tables) <= asyncio.run(_table_names(url))
    assert cli(url, "migrate", "--check").returncode == 0
    migrate.downgrade(url, "base")
    assert asyncio.run(_table_names(url)) <= {"alembic_version"}
    migrate.upgrade(url)
    assert asyncio.run(_table_names(url)) >= TABLES


@pytest.mark.postgres
def test_the_same_migrations_run_on_postgresql(postgres_url: str) -> None:
    # postgres_url is already at head (the template was migrated): go down and up again.
    migrate.downgrade(postgres_url, "base")
    assert asyncio.run(_table_names(postgres_url)) <= {"alembic_version"}
    migrate.upgrade(postgres_url)
    assert asyncio.run(_table_names(postgres_url)) >= TABLES
    assert migrate.is_current(postgres_url)


def test_seed_demo_is_safe_to_run_twice(database_url: str) -> None:
    first = cli(database_url, "seed-demo")
    assert first.returncode == 0, first.stderr
    assert "0 new products" in first.stdout  # the test database was seeded already


@pytest.mark.slow
def test_send_orders_through_a_running_server_and_audit_passes(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"  # what the server checks signatures against
    log = tmp_path / "server.log"
    with running_server(database_url, log, port=port, WHATSORDER_PUBLIC_URL=public_url) as server:
        sent = subprocess.run(
            whatsorder_command("send", "ORDER 2 x ATTA-5KG"),
            env=server_env(database_url, WHATSORDER_PUBLIC_URL=public_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert sent.returncode == 0, sent.stderr + server.log()
    assert "Order ORD-000001 placed" in sent.stdout
    assert "₹530.00" in sent.stdout
    listed = cli(database_url, "orders", "--json")
    assert json.loads(listed.stdout)[0]["number"] == "ORD-000001"
    assert "ORD-000001" in cli(database_url, "orders").stdout
    audit = cli(database_url, "audit")
    assert audit.returncode == 0, audit.stdout
    assert TWILIO_TOKEN not in sent.stdout + sent.stderr


async def _place_order_rows(engine: AsyncEngine) -> None:
    """One order written as the service writes it, via the service layer itself."""
    from whatsorder.db.uow import SqlUnitOfWork
    from whatsorder.ordering import services

    message = services.InboundMessage(
        "twilio", "SMaudit", "whatsapp:+910000000001", "A", "2 x OIL-1L"
    )
    async with engine.connect() as connection:
        await services.receive_message(SqlUnitOfWork(connection), message, utcnow())
        await connection.commit()


@pytest.mark.parametrize(
    ("corruption", "named"),
    [
        ("stock", "stock of OIL-1L"),
        ("ledger", "debit"),
        ("total", "total"),
    ],
)
def test_audit_fails_naming_each_violation_on_a_corrupted_database(
    database_url: str, corruption: str, named: str
) -> None:
    async def corrupt() -> None:
        engine = open_database(database_url)
        try:
            await _place_order_rows(engine)
            async with engine.begin() as connection:
                if corruption == "stock":
                    await connection.execute(
                        update(products).where(products.c.sku == "OIL-1L").values(stock=1)
                    )
                elif corruption == "ledger":
                    row = (await connection.execute(select(ledger_entries))).mappings().one()
                    values = dict(row) | {"source_ref": "ORD-copy"}
                    values.pop("id")
                    await connection.execute(insert(ledger_entries).values(**values))
                else:
                    await connection.execute(update(orders).values(total=1))
        finally:
            await engine.dispose()

    assert cli(database_url, "audit").returncode == 0
    asyncio.run(corrupt())
    audit = cli(database_url, "audit")
    assert audit.returncode == 1
    assert "VIOLATION" in audit.stdout
    assert named in audit.stdout


@pytest.mark.slow
def test_send_through_meta_places_the_order_once_and_queues_the_reply(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    env = {"WHATSORDER_PUBLIC_URL": public_url, "WHATSORDER_META_APP_SECRET": "meta-test-secret"}
    with running_server(database_url, tmp_path / "server.log", port=port, **env):
        runs = [
            subprocess.run(
                whatsorder_command(
                    "send", "ORDER 1 x RICE-5KG", "--provider", "meta", "--message-id", "wamid.1"
                ),
                env=server_env(database_url, **env),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            for _ in range(2)
        ]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr
    assert "outbox" in runs[0].stdout
    listed = json.loads(cli(database_url, "orders", "--json").stdout)
    assert [order["number"] for order in listed] == ["ORD-000001"]  # the resend made none
    assert cli(database_url, "audit").returncode == 0


@pytest.mark.slow
def test_pay_marks_the_order_paid_through_each_provider(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "WHATSORDER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "WHATSORDER_STRIPE_WEBHOOK_SECRET": "whsec_test",
        "WHATSORDER_RAZORPAY_WEBHOOK_SECRET": "rzp-test",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            whatsorder_command(*args),
            env=server_env(database_url, **env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    with running_server(database_url, tmp_path / "server.log", port=port, **env):
        assert run("send", "ORDER 1 x OIL-1L").returncode == 0
        assert run("send", "ORDER 1 x SUGAR-1KG").returncode == 0
        stripe_paid = run("pay", "ORD-000001", "--provider", "stripe")
        razorpay_paid = run("pay", "ORD-000002", "--provider", "razorpay")
    assert stripe_paid.returncode == 0, stripe_paid.stderr + stripe_paid.stdout
    assert razorpay_paid.returncode == 0, razorpay_paid.stderr + razorpay_paid.stdout
    statuses = {
        order["number"]: order["status"] for order in json.loads(run("orders", "--json").stdout)
    }
    assert statuses == {"ORD-000001": "paid", "ORD-000002": "paid"}
    assert run("audit").returncode == 0


def test_each_migration_steps_down_and_up_again_without_losing_orders(database_url: str) -> None:
    """Head → one step down → head, with orders in the database: they are all still there."""

    async def count(*, place_one_first: bool = False) -> int:
        engine = open_database(database_url)
        try:
            if place_one_first:
                await _place_order_rows(engine)
            async with engine.connect() as connection:
                return len(list(await connection.execute(select(orders))))
        finally:
            await engine.dispose()

    before = asyncio.run(count(place_one_first=True))
    assert before == 1
    head = migrate.head_revision(database_url)
    migrate.downgrade(database_url, "-1")
    assert not migrate.is_current(database_url)
    migrate.upgrade(database_url)
    assert migrate.head_revision(database_url) == head
    assert migrate.is_current(database_url)
    assert asyncio.run(count()) == before
    assert cli(database_url, "audit").returncode == 0
