"""The payment-link types every provider speaks: `whatsorder.ordering.link_ports`'s."""

from whatsorder.ordering.link_ports import CreatedLink, LinkFailed, LinkRequest, PaymentLinks

__all__ = ["CreatedLink", "LinkFailed", "LinkRequest", "PaymentLinks"]
