"""``whatsorder operator add|list|disable``: who may sign in to the console at /console."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import click

from whatsorder.cli.database import with_engine
from whatsorder.operators import OperatorError, Role, check_name, hash_password

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@click.group()
def operator() -> None:
    """The console's operators (viewer, operator, admin)."""


def _url() -> str:
    from whatsorder.settings import Settings

    return Settings().database_url


@operator.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice([role.value for role in Role]), required=True)
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted for when not given (it is never echoed).",
)
def add(name: str, role: str, password: str) -> None:
    """Add an operator; the password is hashed with argon2id and never stored."""
    from whatsorder.clock import utcnow
    from whatsorder.db.operators import OperatorExists, add_operator, record_action

    try:
        password_hash = hash_password(password)
        check_name(name)
    except OperatorError as error:
        raise click.UsageError(str(error)) from error

    async def work(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            await add_operator(connection, name, role, password_hash, utcnow())
            await record_action(
                connection,
                operator="(command line)",
                action="operator.add",
                target=name,
                after={"role": role},
                now=utcnow(),
            )

    try:
        asyncio.run(with_engine(_url(), work))
    except OperatorExists as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"operator {name} added as {role}")


@operator.command("list")
def list_() -> None:
    """Every operator: name, role, when it last signed in, and whether it is disabled."""
    from whatsorder.db.operators import all_operators

    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as connection:
            return await all_operators(connection)

    for row in asyncio.run(with_engine(_url(), work)):
        state = "disabled" if row["disabled_at"] else "active"
        last = row["last_login_at"] or "never"
        click.echo(f"{row['name']:24} {row['role']:9} {state:9} last sign-in: {last}")


@operator.command("disable")
@click.argument("name")
def disable(name: str) -> None:
    """Disable an operator: it can no longer sign in, and its sessions end."""
    from whatsorder.clock import utcnow
    from whatsorder.db.operators import disable_operator, record_action

    async def work(engine: AsyncEngine) -> bool:
        async with engine.begin() as connection:
            done = await disable_operator(connection, name, utcnow())
            if done:
                await record_action(
                    connection,
                    operator="(command line)",
                    action="operator.disable",
                    target=name,
                    now=utcnow(),
                )
            return done

    if not asyncio.run(with_engine(_url(), work)):
        raise click.ClickException(f"no active operator named {name!r}")
    click.echo(f"operator {name} disabled")
