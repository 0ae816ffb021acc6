"""The order page's fulfilment buttons: confirm, pack, dispatch, deliver, cancel.

Each is a POST form with the session's CSRF token, for operators and admins. The transition is
the service's (one change, one notification, however many press at once); the answer is the
order page again, saying what changed — or that it had already been done, which a double click
or a second operator sees — or why the machine refused (409).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from whatsorder.ordering.fulfilment import Action, TransitionRefused
from whatsorder.ordering.model import order_id_from_number
from whatsorder.ordering.services import NoSuchOrder
from whatsorder.web.console.rendering import may_change, render, signed_in
from whatsorder.web.console.sessions import Operator
from whatsorder.web.guards import client_ip
from whatsorder.web.runtime import runtime_of

router = APIRouter()
SignedIn = Annotated[Operator, Depends(signed_in)]


@router.post("/orders/{number}/fulfilment/{action}", response_class=HTMLResponse)
async def move_order(request: Request, number: str, action: str, operator: SignedIn) -> Response:
    """Move the order one step on (or cancel it), and show it."""
    await may_change(request, operator)
    runtime = runtime_of(request)
    order_id = order_id_from_number(number)
    if action not in set(Action) or order_id is None:
        return _missing(request, operator, f"There is no order {number} to {action}.")
    try:
        outcome = await runtime.console_fulfilment.transition(
            order_id, Action(action), operator.name, client_ip(request, runtime.settings)
        )
    except NoSuchOrder as missing:
        return _missing(request, operator, str(missing))
    except TransitionRefused as refused:
        return await order_page(request, number, operator, problem=str(refused), status=409)
    return await order_page(request, number, operator, notice=outcome.summary)


async def order_page(
    request: Request,
    number: str,
    operator: Operator,
    *,
    notice: str | None = None,
    problem: str | None = None,
    status: int = 200,
) -> Response:
    order = await runtime_of(request).console_queries.order_detail(number)
    if order is None:
        return _missing(request, operator, f"There is no order {number}.")
    context = {"order": order, "revealed": False, "notice": notice, "problem": problem}
    return render(request, "order.html", context, operator=operator, status=status)


def _missing(request: Request, operator: Operator, reason: str) -> Response:
    return render(request, "refused.html", {"reason": reason}, operator=operator, status=404)
