"""``whatsorder``: the operator's command line.

One module per group of commands: ``service`` (serve, migrate, seed-demo), ``reports`` (orders,
audit, stats), ``cleanup``, ``operators`` (the console's operators), ``fulfilment`` (order
confirm|pack|dispatch|deliver|cancel), ``simulation`` (send, pay), ``payment_links``
(payment-link) and ``reconcile`` (what the payment providers know). Commands import what they
need when they run: ``serve`` must set up metrics storage before anything imports
``prometheus_client``.
"""

from __future__ import annotations

import sys

import click

from whatsorder.cli.cleanup import cleanup
from whatsorder.cli.fulfilment import order
from whatsorder.cli.operators import operator
from whatsorder.cli.payment_links import payment_link
from whatsorder.cli.reconcile import reconcile
from whatsorder.cli.reports import audit, orders, stats
from whatsorder.cli.service import migrate, seed_demo, serve
from whatsorder.cli.simulation import pay, send


@click.group()
def commands() -> None:
    """whatsorder: WhatsApp orders whose webhooks take effect exactly once."""


for _command in (
    serve,
    migrate,
    seed_demo,
    send,
    orders,
    audit,
    cleanup,
    stats,
    pay,
    operator,
    order,
    reconcile,
    payment_link,
):
    commands.add_command(_command)


def main() -> None:
    """The console script: a bad setting is one clear line, not a traceback."""
    from pydantic import ValidationError

    try:
        commands()
    except ValidationError as error:
        for problem in error.errors():
            message = str(problem["msg"]).removeprefix("Value error, ")
            if not problem["loc"]:  # a rule over several settings names them itself
                click.echo(f"error: {message}", err=True)
                continue
            name = "WHATSORDER_" + "_".join(str(part) for part in problem["loc"]).upper()
            click.echo(f"error: {name}: {message}", err=True)
        sys.exit(2)
