"""The reconciliation sweep: what a provider knows of payments and refunds, applied through the
webhooks' own path (issue #17).

Webhooks get lost, or come before the order exists. The sweep asks the provider for the
payments and refunds of a window that ends a grace period ago (younger ones are left to their
webhooks), and applies each as a payment event, exactly as a webhook's: `apply_payment` keys a
credit by the payment and a reversal by the refund (or by the payment's refunded total, as
Stripe's webhooks tell it), and locks the order first. So a sweep and a webhook about the same
money, in either order or at the same instant, credit once and reverse once; a payment for no
order of ours, or of another amount, becomes a payment exception for the operator.

A dry run applies nothing: it reads what the ledger holds and says what a run would do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from whatsorder.ordering.model import order_id_from_number
from whatsorder.ordering.payment_model import PaymentEvent, PaymentKind
from whatsorder.ordering.ports import UnitOfWork
from whatsorder.ordering.reconcile_ports import PaymentSource
from whatsorder.ordering.replies import money
from whatsorder.ordering.services.payments import apply_payment


@dataclass(slots=True)
class SweepReport:
    """What one sweep of one provider found and did (or, in a dry run, would do)."""

    provider: str
    since: datetime
    until: datetime
    dry_run: bool
    lines: list[str] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)

    @property
    def found(self) -> int:
        return sum(self.tally.values())


async def sweep(
    new_uow: Callable[[], UnitOfWork],
    source: PaymentSource,
    since: datetime,
    until: datetime,
    now: datetime,
    *,
    dry_run: bool = False,
) -> SweepReport:
    """Apply (or, ``dry_run``, describe) what ``source`` knows of the window's money."""
    report = SweepReport(source.provider, since, until, dry_run)
    for event in await source.events_between(since, until):
        if dry_run:
            verdict = await _would(new_uow(), event)
        else:
            outcome = await apply_payment(new_uow(), event, now)
            verdict = outcome.result.value
            if outcome.exceptions:
                verdict += (
                    " (exception: " + ", ".join(kind.value for kind in outcome.exceptions) + ")"
                )
        report.tally[verdict.split(" ")[0]] += 1
        report.lines.append(f"{_describe(event)}: {verdict}")
    return report


def _describe(event: PaymentEvent) -> str:
    what = "refund" if event.kind is PaymentKind.REFUNDED else "payment"
    order = event.order_number or "no order"
    ref = event.refund_id or event.payment_id
    return f"{event.provider} {what} {ref} of {money(event.amount, event.currency)} for {order}"


async def _would(uow: UnitOfWork, event: PaymentEvent) -> str:
    """What applying ``event`` would do, read only."""
    async with uow:
        order_id = None if event.order_number is None else order_id_from_number(event.order_number)
        order = None if order_id is None else await uow.payments.order(order_id)
        if order is None:
            return "would_note_exception (unknown order)"
        if event.kind is PaymentKind.SUCCEEDED:
            if await uow.payments.credited(event.provider, event.payment_id) is not None:
                return "known (credited already)"
            if event.amount != order.total:
                return "would_note_exception (amount mismatch)"
            return "would_credit"
        if event.kind is PaymentKind.REFUNDED:
            on_ledger = await uow.payments.refunded(event.provider, event.payment_id)
            if event.refund_id is None and on_ledger >= event.amount:
                return "known (reversed already)"
            return f"would_reverse what the ledger lacks (it holds {on_ledger} refunded)"
    return "ignored"
