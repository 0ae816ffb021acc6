"""``whatsorder order confirm|pack|dispatch|deliver|cancel ORD-…``: fulfilment from a shell.

Each works on the database directly (``WHATSORDER_DATABASE_URL``), through the same service as
the console's buttons: one change, one notification to the customer, one line in the
operators' audit trail, however often it is run. It prints what changed, or that it had
already been done; an unknown order or a transition the machine refuses is one line on stderr
and exit status 1.
"""

from __future__ import annotations

import asyncio
import getpass

import click

from whatsorder.ordering.fulfilment import Action
from whatsorder.ordering.services.fulfilment import CUSTOMER

MAX_ACTOR_CHARS = 64  # order_transitions.actor, operator_actions.operator


@click.group("order")
def order() -> None:
    """Move an order through fulfilment: placed → confirmed → packed → dispatched → delivered,
    or cancelled until dispatched."""


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "cli:unknown"


def _actor(_context: click.Context, _parameter: click.Parameter, value: str | None) -> str:
    actor = _default_actor() if value is None else value.strip()
    if not actor or len(actor) > MAX_ACTOR_CHARS or not actor.isprintable():
        raise click.BadParameter(f"give 1-{MAX_ACTOR_CHARS} printable characters")
    if actor == CUSTOMER:
        raise click.BadParameter(f"{CUSTOMER!r} names the customer's own CANCEL; name yourself")
    return actor


def _run(action: Action, number: str, actor: str) -> None:
    from whatsorder.clock import utcnow
    from whatsorder.db.console_fulfilment import operator_transition
    from whatsorder.db.engine import open_database
    from whatsorder.ordering.fulfilment import TransitionRefused
    from whatsorder.ordering.model import order_id_from_number
    from whatsorder.ordering.services import NoSuchOrder, TransitionOutcome
    from whatsorder.settings import Settings

    order_id = order_id_from_number(number)
    if order_id is None:
        raise click.ClickException(f"{number!r} is not an order number (like ORD-000123)")

    async def work() -> TransitionOutcome:
        database = open_database(Settings().database_url)
        try:
            return await operator_transition(database, order_id, action, actor, utcnow())
        finally:
            await database.dispose()

    try:
        outcome = asyncio.run(work())
    except (NoSuchOrder, TransitionRefused) as refused:
        raise click.ClickException(str(refused)) from refused
    click.echo(outcome.summary)


def _command(action: Action) -> click.Command:
    @click.command(action.value, help=f"{action.value.capitalize()} the order NUMBER (ORD-…).")
    @click.argument("number")
    @click.option(
        "--as",
        "actor",
        callback=_actor,
        help="Who does it, for the audit trail [default: cli:<your user name>].",
    )
    def command(number: str, actor: str) -> None:
        _run(action, number, actor)

    return command


for _action in Action:
    order.add_command(_command(_action))
