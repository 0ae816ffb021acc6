"""The order page's "Make a payment link" button (issue #17).

A POST form with the session's CSRF token, for operators and admins. The link is the service's
(one per order, amount and provider, however many press at once); the answer is the order page
saying the link, or why none was made: nothing to pay (409), or the provider's own message when
it refused or could not be reached (502).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from whatsorder.web.console.fulfilment_pages import order_page
from whatsorder.web.console.rendering import may_change, signed_in
from whatsorder.web.console.sessions import Operator
from whatsorder.web.guards import client_ip
from whatsorder.web.runtime import runtime_of

router = APIRouter()
SignedIn = Annotated[Operator, Depends(signed_in)]


@router.post("/orders/{number}/payment-link", response_class=HTMLResponse)
async def make_payment_link(request: Request, number: str, operator: SignedIn) -> Response:
    """Make (or find) the order's payment link, and show the order."""
    await may_change(request, operator)
    runtime = runtime_of(request)
    address = client_ip(request, runtime.settings)
    outcome = await runtime.make_payment_link(number, operator.name, address)
    if outcome.link is not None:
        notice = f"Payment link ({outcome.link.provider}): {outcome.link.url}"
        return await order_page(request, number, operator, notice=notice)
    if outcome.failure is not None:
        problem = f"No payment link was made: {outcome.failure}"
        return await order_page(request, number, operator, problem=problem, status=502)
    if outcome.order_id is None:
        return await order_page(request, number, operator)  # its own 404 page
    return await order_page(request, number, operator, problem=outcome.reply, status=409)
