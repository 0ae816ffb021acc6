"""The pages a paying customer's browser opens (issue #17).

- ``/paid``: where Stripe Checkout sends the customer after paying (the default
  ``WHATSORDER_PAYMENT_SUCCESS_URL``): the payment is confirmed on WhatsApp once its webhook (or
  the reconciliation sweep) brings it, not by this page.
- ``/dev/pay/<reference>`` (``WHATSORDER_PAYMENT_LINK_PROVIDER=development``, as ``make run``
  sets it): what a development link opens. It takes no money and calls no provider; it says
  what a real link would show, and how to send the payment's webhook by hand.
"""

from __future__ import annotations

import html
import re

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from whatsorder.ordering.replies import money
from whatsorder.providers.links.development import PAGE_PATH
from whatsorder.web.problems import Problem

router = APIRouter(include_in_schema=False)
development_router = APIRouter(include_in_schema=False)
_REFERENCE = re.compile(r"(?P<number>ORD-\d{1,12})-(?P<amount>\d{1,15})-(?P<currency>[A-Z]{3})")
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Development payment link</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main>
<h1>Development payment link</h1>
<p>Order <strong>{number}</strong>: <strong>{amount}</strong>.</p>
<p>This page stands for a Stripe Checkout or Razorpay payment page. It takes no money: in
production the customer pays there, and the provider's webhook tells us.</p>
<p>To pay this order here, send that webhook by hand:</p>
<pre><code>whatsorder pay {number}</code></pre>
</main></body></html>
"""


_PAID = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Thank you</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main>
<h1>Thank you</h1>
<p>Your payment reached the payment provider. We confirm it on WhatsApp as soon as it reaches
us; there is nothing more to do here.</p>
</main></body></html>
"""


@router.get("/paid", response_class=HTMLResponse)
async def paid_page() -> HTMLResponse:
    return HTMLResponse(_PAID)


@development_router.get(PAGE_PATH + "/{reference}", response_class=HTMLResponse)
async def development_payment_page(reference: str) -> HTMLResponse:
    found = _REFERENCE.fullmatch(reference)
    if found is None:
        raise Problem(
            404,
            "no-such-payment-link",
            "No such payment link",
            "A development payment link looks like /dev/pay/ORD-000001-53000-INR.",
        )
    amount = money(int(found["amount"]), found["currency"])
    page = _PAGE.format(number=html.escape(found["number"]), amount=html.escape(amount))
    return HTMLResponse(page)
