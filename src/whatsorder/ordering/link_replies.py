"""What we answer about payment links, as plain text (the web layer wraps it per provider)."""

from __future__ import annotations

from whatsorder.ordering.payment_model import PayableOrder
from whatsorder.ordering.replies import money


def pay_by_link(order: PayableOrder, amount: int, url: str) -> str:
    return (
        f"Pay {money(amount, order.currency)} for order {order.number} here:\n{url}\n"
        "We will confirm here when the payment reaches us."
    )


def already_paid(order: PayableOrder) -> str:
    return f"Order {order.number} is paid already: there is nothing to pay."


def not_payable(order: PayableOrder) -> str:
    return f"Order {order.number} is {order.status.value}: there is nothing to pay."


def nothing_outstanding(order: PayableOrder) -> str:
    return f"Order {order.number} has nothing left to pay."


def links_not_set_up() -> str:
    return (
        "Paying by link is not set up for this shop yet. Please pay the way you usually do; "
        "nothing was charged."
    )


def link_unavailable_now(order: PayableOrder) -> str:
    return (
        f"We could not make a payment link for order {order.number} just now. Please send "
        f"PAY {order.number} again in a minute; nothing was charged."
    )


def link_refused(order: PayableOrder) -> str:
    return (
        f"We could not make a payment link for order {order.number}. The shop has been told and "
        "will send you a way to pay; nothing was charged."
    )
