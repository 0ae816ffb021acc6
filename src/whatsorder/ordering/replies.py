"""What we answer the customer, as plain text in their language (the web layer wraps it for
each provider).

Every sentence is a message id of the gettext catalogues (`whatsorder.ordering.i18n`); the
English text is the id, so ``language=None`` (a customer who never chose) reads English.
Constants are message ids: say them with `said`.
"""

from __future__ import annotations

from collections.abc import Iterable

from whatsorder.ordering.i18n import ENDONYMS, LANGUAGES, N_, translator
from whatsorder.ordering.model import Fulfilment, Order, OrderStatus, Product

CURRENCY_SYMBOLS = {"INR": "₹"}

HELP = N_(
    "Welcome to whatsorder!\n"
    "• MENU: see the catalogue\n"
    "• ORDER 2 x ATTA-5KG, 1 x TOOR-1KG: place an order\n"
    "• STATUS or STATUS ORD-000123: where is my order\n"
    "• CANCEL ORD-000123: cancel an unpaid order\n"
    "• LANGUAGE HI or LANGUAGE EN: replies in Hindi or English\n"
    "• STOP: no more updates from us (START: updates again)"
)

RATE_LIMITED = N_(
    "You are sending messages faster than we can take orders. Please wait a minute and send "
    "your order again; nothing was ordered from this message."
)


MESSAGE_ID_TAKEN = N_(
    "We could not process this message: its message id belongs to another conversation. "
    "Nothing was ordered; please send your message again."
)

STOPPED = N_(
    "You will get no more updates from us on WhatsApp. We still answer whenever you write to "
    "us. Send START to get updates about your orders again."
)

STARTED = N_(
    "You will get updates about your orders from us on WhatsApp again. Send STOP to stop them."
)


def said(message: str, language: str | None = None) -> str:
    """A constant of this module (a message id) in ``language``."""
    return translator(language).gettext(message)


def _status_name(status: OrderStatus, language: str | None) -> str:
    pgettext = translator(language).pgettext
    names = {
        OrderStatus.PLACED: pgettext("order status", "placed"),
        OrderStatus.PAID: pgettext("order status", "paid"),
        OrderStatus.CANCELLED: pgettext("order status", "cancelled"),
        OrderStatus.REFUNDED: pgettext("order status", "refunded"),
    }
    return names[status]


def _fulfilment_name(state: Fulfilment, language: str | None) -> str:
    pgettext = translator(language).pgettext
    names = {
        Fulfilment.PLACED: pgettext("fulfilment", "placed"),
        Fulfilment.CONFIRMED: pgettext("fulfilment", "confirmed"),
        Fulfilment.PACKED: pgettext("fulfilment", "packed"),
        Fulfilment.DISPATCHED: pgettext("fulfilment", "dispatched"),
        Fulfilment.DELIVERED: pgettext("fulfilment", "delivered"),
        Fulfilment.CANCELLED: pgettext("fulfilment", "cancelled"),
    }
    return names[state]


def money(amount: int, currency: str) -> str:
    """``125000, "INR"`` → ``₹1,250.00``; integers only, never float."""
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 100)
    symbol = CURRENCY_SYMBOLS.get(currency, currency + " ")
    return f"{sign}{symbol}{major:,}.{minor:02d}"


def catalogue(products: Iterable[Product], language: str | None = None) -> str:
    _ = translator(language).gettext
    rows = [
        (
            _("%(sku)s: %(name)s, %(price)s (%(stock)d in stock)")
            if p.stock > 0
            else _("%(sku)s: %(name)s, %(price)s (out of stock)")
        )
        % {"sku": p.sku, "name": p.name, "price": money(p.unit_price, p.currency), "stock": p.stock}
        for p in products
    ]
    if not rows:
        return _("Our catalogue is empty right now. Please try again later.")
    return _("Our catalogue:\n%(rows)s\nOrder like: ORDER 2 x ATTA-5KG") % {"rows": "\n".join(rows)}


def _lines(order: Order) -> str:
    return "\n".join(
        f"{line.quantity} x {line.sku} {line.name} = {money(line.total, order.currency)}"
        for line in order.lines
    )


def order_placed(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _(
        "Order %(number)s placed:\n%(lines)s\nTotal: %(total)s\n"
        "Reply STATUS %(number)s to check it, or CANCEL %(number)s to cancel it."
    ) % {"number": order.number, "lines": _lines(order), "total": _total(order)}


def order_status(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Order %(number)s is %(status)s:\n%(lines)s\nTotal: %(total)s") % {
        "number": order.number,
        "status": _status_name(order.status, language),
        "lines": _lines(order),
        "total": _total(order),
    }


def order_cancelled(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Order %(number)s is cancelled. %(total)s has been reversed on your account.") % {
        "number": order.number,
        "total": _total(order),
    }


def cannot_cancel(order: Order, language: str | None = None) -> str:
    _ = translator(language).gettext
    if order.status is OrderStatus.CANCELLED:
        return _("Order %(number)s was already cancelled.") % {"number": order.number}
    if order.fulfilment in (Fulfilment.DISPATCHED, Fulfilment.DELIVERED):
        return _("Order %(number)s is %(status)s and can no longer be cancelled.") % {
            "number": order.number,
            "status": _fulfilment_name(order.fulfilment, language),
        }
    return _("Order %(number)s is %(status)s and can no longer be cancelled.") % {
        "number": order.number,
        "status": _status_name(order.status, language),
    }


def no_such_order(number: str | None, language: str | None = None) -> str:
    _ = translator(language).gettext
    if number is None:
        return _("You have no orders yet. Send MENU to see what you can order.")
    return _("We could not find order %(number)s on your account.") % {"number": number}


def order_rejected(reason: str, language: str | None = None) -> str:
    """``reason`` is already in ``language`` (`OrderRejected.said_in`)."""
    _ = translator(language).gettext
    return _(
        "We could not place your order: %(reason)s Nothing was ordered. "
        "Send MENU to see the catalogue."
    ) % {"reason": reason}


def language_chosen(language: str) -> str:
    """The confirmation, in the language just chosen."""
    _ = translator(language).gettext
    return _("Done: from now on we reply in %(language)s. %(choices)s") % {
        "language": _language_name(language),
        "choices": _choices(language),
    }


def language_unknown(asked: str, language: str | None = None) -> str:
    """The answer to ``LANGUAGE <asked>`` for a language we do not have, in the current one."""
    _ = translator(language).gettext
    if not asked:
        return _choices(language)
    return _('We have no replies in "%(asked)s". %(choices)s') % {
        "asked": asked,
        "choices": _choices(language),
    }


def _language_name(language: str) -> str:
    _ = translator(language).gettext
    names = {"en": N_("English"), "hi": N_("Hindi")}
    return _(names[language])


def _choices(language: str | None) -> str:
    _ = translator(language).gettext
    choices = ", ".join(f"LANGUAGE {code.upper()} ({ENDONYMS[code]})" for code in LANGUAGES)
    return _("To choose a language, send one of: %(choices)s.") % {"choices": choices}


def consent_changed(stopped: bool, language: str | None = None) -> str:
    """Where the customer's consent stands now, after their STOP or START."""
    return said(STOPPED if stopped else STARTED, language)


def _total(order: Order) -> str:
    return money(order.total, order.currency)
