"""Migrations a deployment can rely on: every one steps down and up again without losing the
rows of the tables it leaves, on SQLite and PostgreSQL; none locks a busy table; and the CLI
says when the schema is behind and moves it either way.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from fastapi import FastAPI
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    ADMIN_TOKEN,
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    STATUS_PATH,
    STRIPE_PATH,
    STRIPE_SECRET,
    app_client,
    encode,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_text_message,
    server_env,
    signed_headers,
    status_form,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder.cli import commands
from whatsorder.db import migrate, reports
from whatsorder.db.consent import ConsentChange, ConsentRepository
from whatsorder.db.console_fulfilment import operator_transition
from whatsorder.db.console_money import ConsoleMoney
from whatsorder.db.engine import open_database
from whatsorder.db.migrate import MIGRATIONS
from whatsorder.db.operators import add_operator
from whatsorder.db.payment_links import PaymentLinkRepository
from whatsorder.db.tables import metadata
from whatsorder.ordering.fulfilment import Action
from whatsorder.ordering.payment_model import StoredLink, link_reference
from whatsorder.scheduler import run_cleanup

Rows = dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]


async def _use_every_table(app: FastAPI, database: AsyncEngine) -> None:
    """Fill the database the way the service does: every table gets rows."""
    async with app_client(app) as http:

        async def twilio(path: str, pairs: list[tuple[str, str]]) -> None:
            answer = await http.post(
                path, content=encode(pairs), headers=signed_headers(path, pairs)
            )
            assert answer.status_code == 200, answer.text

        order = inbound_form("ORDER 2 x ATTA-5KG")  # ORD-000001
        await twilio(INBOUND_PATH, order)
        await twilio(INBOUND_PATH, inbound_form("ORDER 1 x OIL-1L"))  # ORD-000002
        await twilio(STATUS_PATH, status_form(dict(order)["MessageSid"], "delivered"))
        for body in (meta_delivery([meta_text_message("ORDER 1 x RICE-5KG")]), b"{not json"):
            answer = await http.post(META_PATH, content=body, headers=meta_headers(body))
            assert answer.status_code == 200, answer.text  # an order (and its reply), a dead letter
        for event in (
            stripe_event("ORD-000001", 53_000),  # paid
            stripe_event("ORD-000002", 1),  # the wrong amount: a payment exception
        ):
            body = stripe_body(event)
            answer = await http.post(STRIPE_PATH, content=body, headers=stripe_headers(body))
            assert answer.status_code == 200, answer.text
        stats = await http.get(  # writes the counts so far to idempotency_stats
            "/api/v1/admin/idempotency/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert stats.status_code == 200, stats.text
    runtime = app.state.runtime
    await runtime.inbox.flush(runtime.database)  # the inbox's rows of these deliveries
    await runtime.close()
    async with database.begin() as connection:  # an operator, and the audit line of its adding
        await add_operator(connection, "asha", "admin", "argon2-hash", datetime.now(UTC))
    money = ConsoleMoney(database)  # an operator resolves the payment exception (audited)
    (exception,) = await money.exceptions(resolved=False)
    await money.resolve(exception["id"], "asked for the rest", "asha", "127.0.0.1")
    await run_cleanup(database, trigger="cli")  # a row in idempotency_cleanup_runs
    await _fulfil_and_stop(database)


async def _fulfil_and_stop(database: AsyncEngine) -> None:
    """An order's fulfilment moves on, its customer says STOP (migration 0008's tables), and a
    payment link is made for another order (0009's)."""
    now = datetime.now(UTC)
    # A transition row, its notification in the outbox and its line in the audit trail.
    await operator_transition(database, 1, Action.CONFIRM, "asha", now)
    async with database.begin() as connection:
        consent = ConsentRepository(connection)
        await consent.record(1, ConsentChange.STOP, "twilio", "SM-stop", now, now, "STOP")
        link = StoredLink(2, "stripe", link_reference(2, 9_900, "INR"), 9_900, "INR")
        await PaymentLinkRepository(connection).store_live(
            link, "cs_test_1", "https://pay.test/1", now
        )


async def _rows(url: str) -> Rows:
    """Every table there is (but Alembic's): its columns and its rows, in a comparable order."""
    engine = open_database(url)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
            rows: Rows = {}
            for name in sorted(set(names) - {"alembic_version"}):
                result = await connection.execute(text(f'SELECT * FROM "{name}"'))  # noqa: S608
                columns = tuple(result.keys())
                rows[name] = (columns, sorted((tuple(row) for row in result), key=repr))
            return rows
    finally:
        await engine.dispose()


async def _indexes(url: str) -> set[tuple[str, str]]:
    """Every (table, index) there is: a step may add indexes only."""
    engine = open_database(url)
    try:
        async with engine.connect() as connection:

            def read(sync: Any) -> set[tuple[str, str]]:
                inspector = inspect(sync)
                return {
                    (table, str(index["name"]))
                    for table in inspector.get_table_names()
                    for index in inspector.get_indexes(table)
                }

            return await connection.run_sync(read)
    finally:
        await engine.dispose()


def _revisions_newest_first() -> list[tuple[str, str | None]]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    return [(revision.revision, revision.down_revision) for revision in script.walk_revisions()]


def test_every_migration_steps_down_and_up_again_keeping_every_row_it_leaves(
    database_url: str, app_factory: Callable[..., FastAPI], db: AsyncEngine
) -> None:
    app = app_factory(meta_app_secret=META_APP_SECRET, stripe_webhook_secret=STRIPE_SECRET)
    asyncio.run(_use_every_table(app, db))
    asyncio.run(db.dispose())
    before = asyncio.run(_rows(database_url))
    empty = [name for name in metadata.tables if not before.get(name, ((), []))[1]]
    assert not empty, f"the test left tables empty: {empty}"

    indexes_before = asyncio.run(_indexes(database_url))
    head = migrate.head_revision(database_url)
    # Shallowest step first, so the tables each step keeps were never dropped by another one.
    for revision, down in _revisions_newest_first():
        if down is None:
            continue  # below the first migration there is nothing left to keep
        migrate.downgrade(database_url, down)
        assert asyncio.run(migrate.current_revision(database_url)) == down
        during = asyncio.run(_rows(database_url))
        for name, (columns, rows) in during.items():
            kept = _projected(before[name], columns)
            assert rows == kept, f"{name}: rows changed by {revision} → {down}"
        indexes = asyncio.run(_indexes(database_url))
        dropped = _shape(during) < _shape(before) or indexes < indexes_before
        assert dropped, f"{revision} → {down} dropped nothing"

        migrate.upgrade(database_url)
        assert migrate.is_current(database_url)
        after = asyncio.run(_rows(database_url))
        assert _shape(after) == _shape(before)
        assert asyncio.run(_indexes(database_url)) == indexes_before
        for name, (columns, rows) in during.items():
            # A column the step dropped may come back with its default, not its value.
            assert _projected(after[name], columns) == rows, (
                f"{name} changed by {revision} down and up"
            )
        # What the step dropped comes back empty: a downgrade loses the newer tables' rows.
        assert all(after[name][1] == [] for name in set(before) - set(during))
        before = after
    assert asyncio.run(migrate.current_revision(database_url)) == head

    async def still_serves_and_audits() -> list[str]:
        engine = open_database(database_url)
        try:
            async with app_client(app_factory()) as http:
                pairs = inbound_form("ORDER 1 x SUGAR-1KG")
                answer = await http.post(
                    INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
                )
                assert "ORD-000004" in answer.text
            async with engine.connect() as connection:
                return await reports.audit(connection)
        finally:
            await engine.dispose()

    assert asyncio.run(still_serves_and_audits()) == []


def _shape(rows: Rows) -> set[tuple[str, str]]:
    """Every (table, column) there is."""
    return {(name, column) for name, (columns, _) in rows.items() for column in columns}


def _projected(
    table: tuple[tuple[str, ...], list[tuple[Any, ...]]], columns: tuple[str, ...]
) -> list[tuple[Any, ...]]:
    """The table's rows on ``columns`` only, sorted as `_rows` sorts them."""
    names, rows = table
    positions = [names.index(column) for column in columns]
    return sorted((tuple(row[i] for i in positions) for row in rows), key=repr)


def _cli(database_url: str, *args: str) -> Result:
    """``whatsorder ARGS`` in this process (the command line, without a second's start-up)."""
    runner = CliRunner()
    return runner.invoke(commands, list(args), env=server_env(database_url), catch_exceptions=False)


def test_migrate_check_fails_while_behind_and_revision_moves_either_way(
    database_url: str,
) -> None:
    head = migrate.head_revision(database_url)
    assert _cli(database_url, "migrate", "--check").exit_code == 0
    (_, previous), *_ = _revisions_newest_first()
    assert previous is not None

    down = _cli(database_url, "migrate", "--revision", "-1")  # the rollback of one release
    assert down.exit_code == 0, down.output
    assert f"schema at {previous}; the code expects {head}" in down.stdout
    behind = _cli(database_url, "migrate", "--check")
    assert behind.exit_code == 1
    assert f"schema at {previous}; code expects {head}" in behind.stderr

    assert _cli(database_url, "migrate", "--revision", "nonsense").exit_code == 1
    up = _cli(database_url, "migrate", "--revision", head or "head")
    assert up.exit_code == 0, up.output
    assert f"schema current ({head})" in up.stdout
    assert _cli(database_url, "migrate", "--check").exit_code == 0


def _index_creations(tree: ast.Module) -> list[tuple[str, str, bool]]:
    """(table, index, concurrently) of every create_index in a migration's upgrade()."""
    upgrade = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "upgrade"
    )
    found = []
    for node in ast.walk(upgrade):
        if isinstance(node, ast.With):  # with op.batch_alter_table("t") as batch_op: …
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and getattr(call.func, "attr", "") == "batch_alter_table"
                    and isinstance(call.args[0], ast.Constant)
                ):
                    table = str(call.args[0].value)
                    for inner in ast.walk(node):
                        if isinstance(inner, ast.Call) and getattr(inner.func, "attr", "") == (
                            "create_index"
                        ):
                            found.append((table, ast.unparse(inner.args[0]), _concurrently(inner)))
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "op.create_index"
            and isinstance(node.args[1], ast.Constant)
        ):
            found.append((str(node.args[1].value), ast.unparse(node.args[0]), _concurrently(node)))
    return found


def _concurrently(call: ast.Call) -> bool:
    return any(
        keyword.arg == "postgresql_concurrently"
        and isinstance(keyword.value, ast.Constant)
        and keyword.value.value is True
        for keyword in call.keywords
    )


def _tables_created(tree: ast.Module) -> set[str]:
    return {
        str(node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "op.create_table"
        and isinstance(node.args[0], ast.Constant)
    }


def test_no_migration_builds_an_index_that_locks_a_table_holding_rows() -> None:
    """An index on a table that exists already is built CONCURRENTLY (no write lock on a busy
    table while replicas serve); one on a table the same migration creates needs not be."""
    versions = sorted((MIGRATIONS / "versions").glob("[0-9]*.py"))
    assert versions
    checked = 0
    for path in versions:
        tree = ast.parse(path.read_text())
        created = _tables_created(tree)
        for table, index, concurrently in _index_creations(tree):
            checked += 1
            assert concurrently or table in created, (
                f"{path.name}: index {index} on {table}, a table that may hold rows, "
                "is not built with postgresql_concurrently=True (see script.py.mako)"
            )
            if concurrently:
                assert "autocommit_block" in path.read_text(), path.name
    assert checked, "no index found: the check reads the migrations wrongly"


def test_the_alembic_environment_runs_a_concurrent_index_migration(
    database_url: str, tmp_path: Path
) -> None:
    """The recipe script.py.mako gives works in our environment, up and down."""
    import shutil

    from alembic import command

    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, location, ignore=shutil.ignore_patterns("__pycache__"))
    head = migrate.head_revision(database_url)
    (location / "versions" / "9999_concurrent_index.py").write_text(
        f'''"""An index on a table that holds rows."""

from alembic import op

revision = "9999"
down_revision = {head!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_orders_status", "orders", ["status"], postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_orders_status", "orders", postgresql_concurrently=True)
'''
    )
    config = migrate.alembic_config(database_url)
    config.set_main_option("script_location", str(location))

    async def indexes() -> set[str]:
        engine = open_database(database_url)
        try:
            async with engine.connect() as connection:
                return {
                    index["name"]
                    for index in await connection.run_sync(
                        lambda sync: inspect(sync).get_indexes("orders")
                    )
                    if index["name"]
                }
        finally:
            await engine.dispose()

    command.upgrade(config, "head")
    assert "ix_orders_status" in asyncio.run(indexes())
    command.downgrade(config, "-1")
    assert "ix_orders_status" not in asyncio.run(indexes())
    assert migrate.is_current(database_url)
