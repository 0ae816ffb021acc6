"""The audit of money: the ledger against what the providers reported, payment by payment.

The payment event log (``payments``: every event about one of our orders, with the amount the
provider reported) is the provider's side; the ledger is ours. For every payment:

- captured: the credit equals the amount the provider captured, posted once, unless every
  capture event of it was refused (another amount or currency than its order's: an operator
  has it as a payment exception);
- refunded: the reversals add up to what the provider refunded — the refunded total where the
  provider reports one (Stripe), the sum of its processed refunds, each counted once by its id,
  where it reports refunds one by one (Razorpay). Less is a refund never posted; more is one
  posted twice or money that never left (a refund only created, or failed);

and an order's status agrees with its money. Each check names the payment and the amounts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from whatsorder.db.tables import ledger_entries, orders, payments
from whatsorder.ordering.model import EntryType, OrderStatus, order_number
from whatsorder.ordering.payment_model import PaymentKind, same_currency


@dataclass
class _Reported:
    """What the provider said of one payment, across all its events."""

    captured: set[int] = field(default_factory=set)  # amounts of accepted capture events
    capture_refused: bool = False
    refunded_total: int = 0  # the highest refunded total reported (Stripe's amount_refunded)
    refunds: dict[str, int] = field(default_factory=dict)  # processed refund id → amount

    @property
    def refunded(self) -> int:
        return max(self.refunded_total, sum(self.refunds.values()))


async def payment_audit(connection: AsyncConnection) -> list[str]:
    """Every violated money invariant, in words; an empty list means the books agree."""
    reported = await _reported(connection)
    posted = await _posted(connection)
    problems: list[str] = []
    for (provider, payment_id), said in sorted(reported.items()):
        name = f"payment {provider}:{payment_id}"
        credits = posted.get((provider, payment_id, EntryType.PAYMENT_CREDIT.value), (0, 0))
        problems.extend(_captured(name, said, credits))
        reversed_ = -posted.get((provider, payment_id, EntryType.REFUND_REVERSAL.value), (0, 0))[0]
        if reversed_ < said.refunded:
            problems.append(
                f"{name}: the provider refunded {said.refunded}, the ledger reverses only "
                f"{reversed_} (a refund was never posted)"
            )
        elif reversed_ > said.refunded:
            problems.append(
                f"{name}: the ledger reverses {reversed_}, the provider refunded only "
                f"{said.refunded} (a refund posted twice, or money that never left)"
            )
    for (source, ref, entry_type), (_, count) in sorted(posted.items()):
        if entry_type == EntryType.PAYMENT_CREDIT.value and count > 1:
            problems.append(f"payment {source}:{ref} is credited {count} times")
        if (source, ref) not in reported and ref is not None:
            problems.append(
                f"the ledger has a {entry_type} of payment {source}:{ref}, "
                "of which no provider event was recorded"
            )
    problems.extend(await _order_states(connection))
    problems.extend(await _orphans(connection))
    return problems


def _captured(name: str, said: _Reported, credits: tuple[int, int]) -> list[str]:
    amount, count = credits
    if not said.captured:
        if count and not said.capture_refused:
            return [f"{name} is credited {amount} but the provider reported no capture"]
        return []
    if len(said.captured) > 1:
        return [f"{name} was reported captured for different amounts: {sorted(said.captured)}"]
    (captured,) = said.captured
    if count != 1 or amount != captured:
        return [
            f"{name}: the provider captured {captured}, the ledger credits {amount} "
            f"in {count} entr{'y' if count == 1 else 'ies'}"
        ]
    return []


async def _reported(connection: AsyncConnection) -> dict[tuple[str, str], _Reported]:
    """Each payment as its events tell it, the refused ones judged by the payment rules again:
    a capture is taken only in the order's currency and for its total, a refund only in the
    order's currency (the exceptions table says why to an operator; the audit does not need it).
    """
    reported: dict[tuple[str, str], _Reported] = defaultdict(_Reported)
    for event in await connection.execute(
        select(
            payments.c.provider,
            payments.c.provider_payment_id,
            payments.c.status,
            payments.c.amount,
            payments.c.currency,
            payments.c.refund_id,
            orders.c.total,
            orders.c.currency.label("order_currency"),
        )
        .join(orders, orders.c.id == payments.c.order_id)
        .where(payments.c.provider_payment_id.is_not(None))
    ):
        said = reported[(event.provider, event.provider_payment_id)]
        in_currency = same_currency(event.currency, event.order_currency)
        if event.status == PaymentKind.SUCCEEDED.value:
            if in_currency and event.amount == event.total:
                said.captured.add(event.amount)
            else:
                said.capture_refused = True
        elif event.status == PaymentKind.REFUNDED.value and in_currency:
            if event.refund_id is None:
                said.refunded_total = max(said.refunded_total, event.amount)
            else:
                said.refunds[event.refund_id] = event.amount
    return reported


async def _posted(connection: AsyncConnection) -> dict[tuple[str, Any, str], tuple[int, int]]:
    """(source, payment, entry type) → (sum, count) of the ledger's payment entries."""
    rows = await connection.execute(
        select(
            ledger_entries.c.source,
            ledger_entries.c.payment_ref,
            ledger_entries.c.entry_type,
            func.sum(ledger_entries.c.amount).label("amount"),
            func.count().label("n"),
        )
        .where(
            ledger_entries.c.entry_type.in_(
                [EntryType.PAYMENT_CREDIT.value, EntryType.REFUND_REVERSAL.value]
            )
        )
        .group_by(
            ledger_entries.c.source, ledger_entries.c.payment_ref, ledger_entries.c.entry_type
        )
    )
    return {
        (row.source, row.payment_ref, row.entry_type): (int(row.amount), int(row.n)) for row in rows
    }


async def _order_states(connection: AsyncConnection) -> list[str]:
    """A paid order holds a credit of its total; a refunded one has its total reversed."""

    def total_of(entry_type: EntryType) -> Any:
        return (
            select(func.coalesce(func.sum(ledger_entries.c.amount), 0))
            .where(
                ledger_entries.c.order_id == orders.c.id,
                ledger_entries.c.entry_type == entry_type.value,
            )
            .scalar_subquery()
        )

    credited = total_of(EntryType.PAYMENT_CREDIT)
    refunded = -total_of(EntryType.REFUND_REVERSAL)
    problems: list[str] = []
    for row in await connection.execute(
        select(
            orders.c.id,
            orders.c.status,
            orders.c.total,
            credited.label("credited"),
            refunded.label("refunded"),
        )
    ):
        number = order_number(row.id)
        if row.status == OrderStatus.PAID.value and row.credited < row.total:
            problems.append(f"{number} is paid but its credits are {row.credited} of {row.total}")
        if row.status == OrderStatus.PAID.value and row.refunded >= max(row.total, row.credited):
            problems.append(
                f"{number} has {row.refunded} of {row.credited} paid refunded but is still paid"
            )
        if row.status == OrderStatus.REFUNDED.value and row.refunded < row.total:
            problems.append(
                f"{number} is refunded but only {row.refunded} of {row.total} is reversed"
            )
    return problems


async def _orphans(connection: AsyncConnection) -> list[str]:
    problems: list[str] = []
    for orphan in await connection.execute(
        select(
            ledger_entries.c.entry_type,
            ledger_entries.c.source,
            ledger_entries.c.source_ref,
            ledger_entries.c.order_id,
        )
        .outerjoin(orders, orders.c.id == ledger_entries.c.order_id)
        .where(
            ledger_entries.c.entry_type.in_(
                [EntryType.PAYMENT_CREDIT.value, EntryType.REFUND_REVERSAL.value]
            ),
            orders.c.id.is_(None),
        )
    ):
        problems.append(
            f"the {orphan.entry_type} {orphan.source}:{orphan.source_ref} "
            f"references no order (order id {orphan.order_id})"
        )
    return problems
