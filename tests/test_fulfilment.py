"""Fulfilment on real databases: the CLI's transitions, the same one pressed at once, cancels
that give back once, and the audit that checks every change has its one notification."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from support import INBOUND_PATH, encode, inbound_form, new_sid, server_env, signed_headers
from whatsorder.cli import commands
from whatsorder.db.audit import audit
from whatsorder.db.console_fulfilment import operator_transition
from whatsorder.db.tables import (
    ledger_entries,
    operator_actions,
    order_transitions,
    orders,
    outbox_messages,
    products,
)
from whatsorder.db.uow import SqlUnitOfWork
from whatsorder.ordering import services
from whatsorder.ordering.fulfilment import Action, TransitionRefused
from whatsorder.ordering.model import InboundMessage, OrderStatus
from whatsorder.ordering.payment_model import PaymentEvent, PaymentKind
from whatsorder.ordering.services import TransitionOutcome

CUSTOMER = "whatsapp:+919876543210"


def now() -> datetime:
    return datetime.now(UTC)


async def place(db: AsyncEngine, text: str = "ORDER 2 x ATTA-5KG", sid: str = "SM-1") -> int:
    message = InboundMessage("twilio", sid, CUSTOMER, "Asha Rao", text)
    outcome = await services.receive_message(SqlUnitOfWork(db), message, now())
    assert outcome.created, outcome.reply
    assert outcome.order_id is not None
    return outcome.order_id


async def say(db: AsyncEngine, text: str, sid: str) -> str:
    message = InboundMessage("twilio", sid, CUSTOMER, "Asha Rao", text)
    return (await services.receive_message(SqlUnitOfWork(db), message, now())).reply


async def cli(database_url: str, *args: str) -> Result:
    """``whatsorder ARGS`` as an operator runs it (in a thread: it runs its own event loop)."""
    runner = CliRunner()
    env = server_env(database_url)
    return await asyncio.to_thread(runner.invoke, commands, list(args), env=env)


async def facts(db: AsyncEngine, order_id: int) -> dict[str, Any]:
    """What an operator would check about an order: its states, rows and money."""
    async with db.connect() as connection:
        order = (await connection.execute(select(orders).where(orders.c.id == order_id))).one()

        async def listed(statement: Any) -> list[Any]:
            return [tuple(row) for row in await connection.execute(statement)]

        return {
            "fulfilment": order.fulfilment,
            "status": order.status,
            "transitions": await listed(
                select(order_transitions.c.to_state, order_transitions.c.actor)
                .where(order_transitions.c.order_id == order_id)
                .order_by(order_transitions.c.id)
            ),
            "notifications": await listed(
                select(outbox_messages.c.idempotency_key, outbox_messages.c.proactive)
                .where(outbox_messages.c.order_id == order_id)
                .order_by(outbox_messages.c.id)
            ),
            "audited": await listed(
                select(operator_actions.c.operator, operator_actions.c.action)
                .where(operator_actions.c.action.startswith("order."))
                .order_by(operator_actions.c.id)
            ),
            "reversals": await connection.scalar(
                select(func.count()).where(
                    ledger_entries.c.order_id == order_id,
                    ledger_entries.c.entry_type == "order_reversal",
                )
            ),
            "atta_stock": await connection.scalar(
                select(products.c.stock).where(products.c.sku == "ATTA-5KG")
            ),
        }


async def test_each_transition_from_the_cli_is_made_once_notified_once_and_audited(
    database_url: str, db: AsyncEngine
) -> None:
    order_id = await place(db)
    stock = (await facts(db, order_id))["atta_stock"]

    confirmed = await cli(database_url, "order", "confirm", "ORD-000001", "--as", "asha")
    again = await cli(database_url, "order", "confirm", "ord-1", "--as", "ravi")
    steps = [
        await cli(database_url, "order", action, "ORD-000001", "--as", "asha")
        for action in ("pack", "dispatch", "deliver")
    ]
    stale = await cli(database_url, "order", "pack", "ORD-000001", "--as", "ravi")

    assert (confirmed.exit_code, confirmed.output) == (0, "ORD-000001 confirmed (it was placed).\n")
    assert (again.exit_code, again.output) == (
        0,
        "ORD-000001 was already confirmed: nothing changed.\n",
    )
    assert [step.exit_code for step in steps] == [0, 0, 0], [step.output for step in steps]
    assert steps[-1].output == "ORD-000001 delivered (it was dispatched).\n"
    assert stale.output == "ORD-000001 was already packed; it is delivered now: nothing changed.\n"
    states = ("confirmed", "packed", "dispatched", "delivered")
    assert await facts(db, order_id) == {
        "fulfilment": "delivered",
        "status": "placed",
        "transitions": [(state, "asha") for state in states],
        "notifications": [(f"notify:1:{state}", True) for state in states],
        "audited": [
            ("asha", f"order.{action}") for action in ("confirm", "pack", "dispatch", "deliver")
        ],
        "reversals": 0,
        "atta_stock": stock,
    }
    listed = await cli(database_url, "orders")
    assert re.search(r"ORD-000001 +placed +delivered ", listed.output), listed.output
    async with db.connect() as connection:
        assert await audit(connection) == []


async def test_the_cli_names_who_did_it_after_the_os_user_by_default(
    database_url: str, db: AsyncEngine
) -> None:
    await place(db)
    result = await cli(database_url, "order", "confirm", "ORD-000001")
    assert result.exit_code == 0, result.output
    (transition,) = (await facts(db, 1))["transitions"]
    assert transition[1].startswith("cli:")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("deliver", "ORD-000001"), "ORD-000001 is placed: it cannot deliver yet; the next step"),
        (("confirm", "ORD-000999"), "There is no order ORD-000999."),
        (("confirm", "order-one"), "'order-one' is not an order number (like ORD-000123)"),
        (("confirm", "ORD-000001", "--as", "customer"), "names the customer's own CANCEL"),
        (("ship", "ORD-000001"), "No such command 'ship'"),
    ],
)
async def test_the_cli_refuses_in_one_line_and_changes_nothing(
    database_url: str, db: AsyncEngine, args: tuple[str, ...], says: str
) -> None:
    order_id = await place(db)
    before = await facts(db, order_id)

    result = await cli(database_url, "order", *args)

    assert result.exit_code != 0
    assert says in result.output
    assert "Traceback" not in result.output
    assert await facts(db, order_id) == before


@pytest.mark.parametrize("action", [Action.CONFIRM, Action.CANCEL])
async def test_the_same_transition_pressed_at_once_makes_one_change_and_one_notification(
    database_url: str, db: AsyncEngine, action: Action
) -> None:
    order_id = await place(db)
    stock_before_order = (await facts(db, order_id))["atta_stock"] + 2

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(
                operator_transition(db, order_id, action, name, now())
                for name in ("asha", "ravi", "meera", "dev")
            )
        ),
        timeout=30,
    )

    assert sorted(outcome.changed for outcome in outcomes) == [False, False, False, True]
    (winner,) = (outcome for outcome in outcomes if outcome.changed)
    seen = await facts(db, order_id)
    state = action.target.value
    assert seen["fulfilment"] == state
    assert len(seen["transitions"]) == 1
    assert seen["transitions"][0][0] == state
    assert seen["notifications"] == [(f"notify:1:{state}", True)]
    assert len(seen["audited"]) == 1
    if action is Action.CANCEL:
        assert seen["status"] == "cancelled"
        assert seen["reversals"] == 1
        assert seen["atta_stock"] == stock_before_order
    assert all(o.summary.endswith("nothing changed.") for o in outcomes if o is not winner)
    async with db.connect() as connection:
        assert await audit(connection) == []


async def test_a_retried_transition_after_a_crash_before_commit_makes_one_change(
    db: AsyncEngine,
) -> None:
    """The first try died inside its transaction (nothing committed); the retry does it once."""
    order_id = await place(db)

    class Crash(Exception):
        pass

    async def crashing() -> TransitionOutcome:
        async with db.connect() as connection, connection.begin():
            await services.transition(
                SqlUnitOfWork(connection), order_id, Action.CONFIRM, "asha", now()
            )
            raise Crash  # the process dies before the outer transaction commits

    with pytest.raises(Crash):
        await crashing()
    assert (await facts(db, order_id))["transitions"] == []

    retried = await operator_transition(db, order_id, Action.CONFIRM, "asha", now())
    repeated = await operator_transition(db, order_id, Action.CONFIRM, "asha", now())

    assert (retried.changed, repeated.changed) == (True, False)
    seen = await facts(db, order_id)
    assert (len(seen["transitions"]), len(seen["notifications"]), len(seen["audited"])) == (1, 1, 1)


async def test_a_paid_order_is_not_cancelled_and_says_refund_it_first(
    database_url: str, db: AsyncEngine
) -> None:
    order_id = await place(db)
    uow = SqlUnitOfWork(db)
    async with uow:
        await uow.ordering.set_order_status(order_id, OrderStatus.PLACED, OrderStatus.PAID, now())
        await uow.commit()
    before = await facts(db, order_id)

    result = await cli(database_url, "order", "cancel", "ORD-000001", "--as", "asha")

    assert result.exit_code == 1
    assert "ORD-000001 is paid: refund it through its payment provider first" in result.output
    assert await facts(db, order_id) == before


async def test_the_customers_cancel_is_a_transition_and_refused_once_dispatched(
    db: AsyncEngine,
) -> None:
    first = await place(db, sid="SM-1")
    second = await place(db, "ORDER 1 x ATTA-5KG", sid="SM-2")
    for action in (Action.CONFIRM, Action.PACK, Action.DISPATCH):
        await operator_transition(db, second, action, "asha", now())

    cancelled = await say(db, "CANCEL ORD-000001", "SM-3")
    refused = await say(db, "CANCEL ORD-000002", "SM-4")

    assert cancelled.startswith("Order ORD-000001 is cancelled.")
    assert refused == "Order ORD-000002 is dispatched and can no longer be cancelled."
    mine = await facts(db, first)
    assert (mine["fulfilment"], mine["status"], mine["reversals"]) == ("cancelled", "cancelled", 1)
    assert mine["transitions"] == [("cancelled", "customer")]
    assert mine["notifications"] == []  # the reply tells the customer
    shipped = await facts(db, second)
    assert (shipped["fulfilment"], shipped["status"], shipped["reversals"]) == (
        "dispatched",
        "placed",
        0,
    )
    async with db.connect() as connection:
        assert await audit(connection) == []


async def test_the_customer_and_an_operator_cancelling_at_once_cancel_once(
    db: AsyncEngine,
) -> None:
    order_id = await place(db)
    stock = (await facts(db, order_id))["atta_stock"]

    async def operator() -> TransitionOutcome | TransitionRefused:
        try:
            return await operator_transition(db, order_id, Action.CANCEL, "asha", now())
        except TransitionRefused as refused:
            return refused

    reply, by_operator = await asyncio.wait_for(
        asyncio.gather(say(db, "CANCEL ORD-000001", "SM-9"), operator()), timeout=30
    )

    seen = await facts(db, order_id)
    assert (seen["status"], seen["fulfilment"], seen["reversals"]) == ("cancelled", "cancelled", 1)
    assert seen["atta_stock"] == stock + 2
    assert len(seen["transitions"]) == 1
    customer_won = seen["transitions"][0][1] == "customer"
    assert isinstance(by_operator, TransitionOutcome)
    assert by_operator.changed is not customer_won
    assert len(seen["notifications"]) == (0 if customer_won else 1)
    if customer_won:
        assert reply.startswith("Order ORD-000001 is cancelled.")
    else:
        assert reply == "Order ORD-000001 was already cancelled."
    async with db.connect() as connection:
        assert await audit(connection) == []


async def test_the_audit_catches_a_notification_deleted_by_hand(db: AsyncEngine) -> None:
    order_id = await place(db)
    await operator_transition(db, order_id, Action.CONFIRM, "asha", now())
    async with db.begin() as connection:
        await connection.execute(
            delete(outbox_messages).where(outbox_messages.c.idempotency_key == "notify:1:confirmed")
        )

    async with db.connect() as connection:
        problems = await audit(connection)

    assert problems == ["ORD-000001 became confirmed with 0 notifications (expected exactly one)"]


async def test_the_audit_catches_a_state_its_transitions_do_not_explain(db: AsyncEngine) -> None:
    order_id = await place(db)
    async with db.begin() as connection:
        await connection.execute(
            orders.update().where(orders.c.id == order_id).values(fulfilment="packed")
        )

    async with db.connect() as connection:
        problems = await audit(connection)

    assert problems == ["ORD-000001 is packed but no transition took it there"]


async def test_operators_pressing_every_button_at_once_leave_a_chain_the_audit_accepts(
    db: AsyncEngine,
) -> None:
    """Eight presses of different buttons at the same moment: each change is one step of one
    chain (every transition starts where the one before ended), each has one notification, and
    a press the machine refuses changes nothing."""
    order_id = await place(db)
    actions = [Action.CONFIRM, Action.PACK, Action.CANCEL, Action.CONFIRM] * 2

    async def press(action: Action, name: str) -> TransitionOutcome | TransitionRefused:
        try:
            return await operator_transition(db, order_id, action, name, now())
        except TransitionRefused as refused:
            return refused

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(press(action, f"op{i}") for i, action in enumerate(actions))),
        timeout=60,
    )

    async with db.connect() as connection:
        chain = [
            (row.from_state, row.to_state)
            for row in await connection.execute(
                select(order_transitions)
                .where(order_transitions.c.order_id == order_id)
                .order_by(order_transitions.c.id)
            )
        ]
        problems = await audit(connection)
    changes = [o for o in outcomes if isinstance(o, TransitionOutcome) and o.changed]
    assert len(changes) == len(chain)
    assert chain[0][0] == "placed"
    assert all(before[1] == after[0] for before, after in itertools.pairwise(chain))
    seen = await facts(db, order_id)
    assert seen["fulfilment"] == chain[-1][1]
    assert len(seen["notifications"]) == len(chain)
    assert seen["reversals"] == (1 if seen["fulfilment"] == "cancelled" else 0)
    assert problems == []


async def test_a_payment_and_a_cancel_at_once_never_leave_a_paid_order_cancelled_unrefunded(
    db: AsyncEngine,
) -> None:
    """Whichever commits first decides: paid (and the cancel is refused: refund it first), or
    cancelled (and the payment is an exception for an operator, as for any cancelled order)."""
    order_id = await place(db)
    total = 2 * 26_500
    event = PaymentEvent(
        "stripe", "evt_race", PaymentKind.SUCCEEDED, "pi_race", "ORD-000001", total, "INR"
    )

    async def cancel() -> TransitionOutcome | TransitionRefused:
        try:
            return await operator_transition(db, order_id, Action.CANCEL, "asha", now())
        except TransitionRefused as refused:
            return refused

    cancelled, _paid = await asyncio.wait_for(
        asyncio.gather(cancel(), services.apply_payment(SqlUnitOfWork(db), event, now())),
        timeout=30,
    )

    seen = await facts(db, order_id)
    if isinstance(cancelled, TransitionOutcome):
        assert (seen["status"], seen["fulfilment"], seen["reversals"]) == (
            "cancelled",
            "cancelled",
            1,
        )
    else:
        assert "refund it" in str(cancelled)
        assert (seen["status"], seen["fulfilment"], seen["reversals"]) == ("paid", "placed", 0)
        assert seen["transitions"] == []
        assert seen["notifications"] == []
    async with db.connect() as connection:
        assert await audit(connection) == []


async def test_a_customers_cancel_through_the_webhook_is_one_transition_however_often_it_comes(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    async def message(text: str, sid: str) -> str:
        pairs = inbound_form(text, sid=sid)
        answer = await client.post(
            INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
        )
        assert answer.status_code == 200, answer.text
        return answer.text

    await message("ORDER 1 x OIL-1L", new_sid())  # ORD-000001
    await message("ORDER 1 x OIL-1L", new_sid())  # ORD-000002
    for action in (Action.CONFIRM, Action.PACK, Action.DISPATCH):
        await operator_transition(db, 2, action, "asha", now())
    cancel = new_sid()

    first = await message("CANCEL ORD-000001", cancel)
    retried = await message("CANCEL ORD-000001", cancel)  # Twilio's retry of the same message
    refused = await message("CANCEL ORD-000002", new_sid())

    assert "Order ORD-000001 is cancelled." in first
    assert retried == first
    assert "Order ORD-000002 is dispatched and can no longer be cancelled." in refused
    cancelled = await facts(db, 1)
    assert (cancelled["fulfilment"], cancelled["status"], cancelled["reversals"]) == (
        "cancelled",
        "cancelled",
        1,
    )
    assert cancelled["transitions"] == [("cancelled", "customer")]
    assert (await facts(db, 2))["fulfilment"] == "dispatched"
    async with db.connect() as connection:
        assert await audit(connection) == []
