"""What we answer the customer, as plain text (the web layer wraps it for each provider)."""

from __future__ import annotations

from collections.abc import Iterable

from whatsorder.ordering.model import Fulfilment, Order, OrderStatus, Product

CURRENCY_SYMBOLS = {"INR": "₹"}

HELP = (
    "Welcome to whatsorder!\n"
    "• MENU: see the catalogue\n"
    "• ORDER 2 x ATTA-5KG, 1 x TOOR-1KG: place an order\n"
    "• STATUS or STATUS ORD-000123: where is my order\n"
    "• CANCEL ORD-000123: cancel an unpaid order"
)

RATE_LIMITED = (
    "You are sending messages faster than we can take orders. Please wait a minute and send "
    "your order again; nothing was ordered from this message."
)


MESSAGE_ID_TAKEN = (
    "We could not process this message: its message id belongs to another conversation. "
    "Nothing was ordered; please send your message again."
)


def money(amount: int, currency: str) -> str:
    """``125000, "INR"`` → ``₹1,250.00``; integers only, never float."""
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 100)
    symbol = CURRENCY_SYMBOLS.get(currency, currency + " ")
    return f"{sign}{symbol}{major:,}.{minor:02d}"


def catalogue(products: Iterable[Product]) -> str:
    rows = [
        f"{p.sku}: {p.name}, {money(p.unit_price, p.currency)}"
        + (f" ({p.stock} in stock)" if p.stock > 0 else " (out of stock)")
        for p in products
    ]
    if not rows:
        return "Our catalogue is empty right now. Please try again later."
    return "Our catalogue:\n" + "\n".join(rows) + "\nOrder like: ORDER 2 x ATTA-5KG"


def _lines(order: Order) -> str:
    return "\n".join(
        f"{line.quantity} x {line.sku} {line.name} = {money(line.total, order.currency)}"
        for line in order.lines
    )


def order_placed(order: Order) -> str:
    return (
        f"Order {order.number} placed:\n{_lines(order)}\n"
        f"Total: {money(order.total, order.currency)}\n"
        f"Reply STATUS {order.number} to check it, or CANCEL {order.number} to cancel it."
    )


def order_status(order: Order) -> str:
    return (
        f"Order {order.number} is {order.status.value}:\n{_lines(order)}\n"
        f"Total: {money(order.total, order.currency)}"
    )


def order_cancelled(order: Order) -> str:
    return (
        f"Order {order.number} is cancelled. "
        f"{money(order.total, order.currency)} has been reversed on your account."
    )


def cannot_cancel(order: Order) -> str:
    if order.status is OrderStatus.CANCELLED:
        return f"Order {order.number} was already cancelled."
    if order.fulfilment in (Fulfilment.DISPATCHED, Fulfilment.DELIVERED):
        return f"Order {order.number} is {order.fulfilment.value} and can no longer be cancelled."
    return f"Order {order.number} is {order.status.value} and can no longer be cancelled."


def no_such_order(number: str | None) -> str:
    if number is None:
        return "You have no orders yet. Send MENU to see what you can order."
    return f"We could not find order {number} on your account."


def order_rejected(reason: str) -> str:
    return (
        f"We could not place your order: {reason} Nothing was ordered. "
        "Send MENU to see the catalogue."
    )
