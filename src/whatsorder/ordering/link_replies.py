"""What we answer about payment links, as plain text in the customer's language (the web layer
wraps it per provider). Each sentence is a message id of the gettext catalogues
(`whatsorder.ordering.i18n`)."""

from __future__ import annotations

from whatsorder.ordering.i18n import translator
from whatsorder.ordering.payment_model import PayableOrder
from whatsorder.ordering.replies import money


def pay_by_link(order: PayableOrder, amount: int, url: str, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _(
        "Pay %(amount)s for order %(number)s here:\n%(url)s\n"
        "We will confirm here when the payment reaches us."
    ) % {"amount": money(amount, order.currency), "number": order.number, "url": url}


def already_paid(order: PayableOrder, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Order %(number)s is paid already: there is nothing to pay.") % {
        "number": order.number
    }


def not_payable(order: PayableOrder, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Order %(number)s is %(status)s: there is nothing to pay.") % {
        "number": order.number,
        "status": translator(language).pgettext("order status", order.status.value),
    }


def nothing_outstanding(order: PayableOrder, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _("Order %(number)s has nothing left to pay.") % {"number": order.number}


def links_not_set_up(language: str | None = None) -> str:
    _ = translator(language).gettext
    return _(
        "Paying by link is not set up for this shop yet. Please pay the way you usually do; "
        "nothing was charged."
    )


def link_unavailable_now(order: PayableOrder, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _(
        "We could not make a payment link for order %(number)s just now. Please send "
        "PAY %(number)s again in a minute; nothing was charged."
    ) % {"number": order.number}


def link_refused(order: PayableOrder, language: str | None = None) -> str:
    _ = translator(language).gettext
    return _(
        "We could not make a payment link for order %(number)s. The shop has been told and "
        "will send you a way to pay; nothing was charged."
    ) % {"number": order.number}
