"""Payment links at the providers, each created once (issue #17).

- `base`: what a link request is, what came back, and how a failure is told;
- `stripe_links`: Stripe Checkout Sessions, once by ``Idempotency-Key``;
- `razorpay_links`: Razorpay Payment Links, once by ``reference_id``.
"""

from whatsorder.providers.links.base import CreatedLink, LinkFailed, LinkRequest, PaymentLinks

__all__ = ["CreatedLink", "LinkFailed", "LinkRequest", "PaymentLinks"]
