"""The console's pages: sign-in and out, orders, catalogue, audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from whatsorder.operators import StaleEdit, password_matches
from whatsorder.web.console import sessions
from whatsorder.web.console.order_filters import (
    FULFILMENT_STATES,
    ORDER_STATUSES,
    BadFilter,
    OrderFilters,
)
from whatsorder.web.console.rendering import NotAllowed, may_change, render, signed_in
from whatsorder.web.console.sessions import Operator
from whatsorder.web.guards import client_ip
from whatsorder.web.runtime import runtime_of

router = APIRouter()
SignedIn = Annotated[Operator, Depends(signed_in)]
PAGE_SIZE = 50  # as the queries page them
WEBHOOK_TYPES = (
    "twilio_inbound",
    "twilio_status",
    "meta",
    "meta_message",
    "meta_status",
    "meta_dead_letter",
    "meta_preference",
    "stripe",
    "razorpay",
)
INBOX_OUTCOMES = (
    "new",
    "replayed",
    "takeover",
    "not_stored",
    "in_flight",
    "mismatch",
    "refused",
    "store_busy",
    "store_unavailable",
    "handler_error",
)


@router.get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    return RedirectResponse(request.url_for("orders_page"), status_code=303)


@router.get("/login", response_class=HTMLResponse, name="sign_in_form")
async def sign_in_form(request: Request) -> Response:
    return render(request, "login.html", {"problem": None})


@router.post("/login", response_class=HTMLResponse)
async def sign_in(
    request: Request, name: Annotated[str, Form()], password: Annotated[str, Form()]
) -> Response:
    runtime = runtime_of(request)
    address = client_ip(request, runtime.settings)
    if not await runtime.console_sign_ins.allow(name, address):
        problem = "Too many sign-in attempts. Wait a minute, then try again."
        return render(request, "login.html", {"problem": problem}, status=429)
    row = await runtime.console_queries.operator(name)
    matches = password_matches(row["password_hash"] if row else None, password)
    if row is None or not matches or row["disabled_at"] is not None:
        # One answer for a wrong name, a wrong password and a disabled operator alike.
        await runtime.console_sign_ins.failed(name)
        problem = "That name and password do not match an active operator."
        return render(request, "login.html", {"problem": problem}, status=401)
    sessions.start(request, row["name"])
    await runtime.console_queries.signed_in(row["name"], address)
    return RedirectResponse(request.url_for("orders_page"), status_code=303)


@router.post("/logout")
async def sign_out(request: Request, operator: SignedIn) -> Response:
    form = await request.form()
    sent = form.get("csrf_token")
    if sessions.csrf_matches(request, sent if isinstance(sent, str) else None):
        runtime = runtime_of(request)
        await runtime.console_queries.note(
            operator.name, "sign-out", client_ip(request, runtime.settings)
        )
        sessions.end(request)
    return RedirectResponse(request.url_for("sign_in_form"), status_code=303)


@router.get("/orders", response_class=HTMLResponse, name="orders_page")
async def orders_page(
    request: Request,
    operator: SignedIn,
    status: str | None = None,
    fulfilment: str | None = None,
    retailer: str | None = None,
    q: str | None = None,
    placed_from: Annotated[str | None, Query(alias="from")] = None,
    placed_to: Annotated[str | None, Query(alias="to")] = None,
    page: str | None = None,
) -> Response:
    queries = runtime_of(request).console_queries
    context: dict[str, Any] = {
        "statuses": ORDER_STATUSES,
        "fulfilment_states": FULFILMENT_STATES,
        # What the operator typed goes back into the form, even when it is wrong.
        "typed": {
            "status": status or "",
            "fulfilment": fulfilment or "",
            "q": q or "",
            "from": placed_from or "",
            "to": placed_to or "",
        },
        "retailer": None,
    }
    try:
        chosen = OrderFilters.read(
            status=status,
            fulfilment=fulfilment,
            retailer=retailer,
            search=q,
            placed_from=placed_from,
            placed_to=placed_to,
            page=page,
        )
        if chosen.retailer_id is not None:
            context["retailer"] = await queries.retailer_name(chosen.retailer_id)
            if context["retailer"] is None:
                raise BadFilter(f"There is no retailer {chosen.retailer_id}.")
    except BadFilter as bad:
        context.update(chosen=OrderFilters(), problem=str(bad), orders=[], total=None, pages=1)
        return render(request, "orders.html", context, operator=operator, status=400)
    rows, total = await queries.orders(
        status=chosen.status,
        fulfilment=chosen.fulfilment,
        retailer_id=chosen.retailer_id,
        search=chosen.search,
        since=chosen.since,
        before=chosen.before,
        page=chosen.page,
    )
    context.update(
        chosen=chosen,
        problem=None,
        orders=rows,
        total=total,
        pages=max(1, -(-total // PAGE_SIZE)),
    )
    return render(request, "orders.html", context, operator=operator)


@router.get("/orders/{number}", response_class=HTMLResponse, name="order_page")
async def order_page(request: Request, number: str, operator: SignedIn) -> Response:
    return await _order(request, number, operator, revealed=False)


@router.post("/orders/{number}/reveal", response_class=HTMLResponse)
async def reveal_phone(request: Request, number: str, operator: SignedIn) -> Response:
    """An admin sees the retailer's full number on this one page; the audit trail says so."""
    await may_change(request, operator)
    if not operator.role.is_admin():
        raise NotAllowed("Only an admin may reveal a phone number.")
    runtime = runtime_of(request)
    await runtime.console_queries.note(
        operator.name, "phone.reveal", client_ip(request, runtime.settings), target=number
    )
    return await _order(request, number, operator, revealed=True)


async def _order(request: Request, number: str, operator: Operator, *, revealed: bool) -> Response:
    order = await runtime_of(request).console_queries.order_detail(number)
    if order is None:
        context = {"reason": f"There is no order {number}."}
        return render(request, "refused.html", context, operator=operator, status=404)
    return render(request, "order.html", {"order": order, "revealed": revealed}, operator=operator)


@router.get("/inbox", response_class=HTMLResponse, name="inbox_page")
async def inbox_page(
    request: Request,
    operator: SignedIn,
    webhook_type: str | None = None,
    outcome: str | None = None,
    page: int = 1,
) -> Response:
    runtime = runtime_of(request)
    rows, total = await runtime.console_queries.deliveries(
        webhook_type=webhook_type or None, outcome=outcome or None, page=max(1, page)
    )
    context = {
        "deliveries": rows,
        "total": total,
        "chosen": {"webhook_type": webhook_type, "outcome": outcome, "page": max(1, page)},
        "pages": max(1, -(-total["n"] // PAGE_SIZE)),
        # Past the count's bound, an older page is there as long as this one is full.
        "older": len(rows) == PAGE_SIZE and total["says"].startswith("more"),
        "webhook_types": WEBHOOK_TYPES,
        "outcomes": INBOX_OUTCOMES,
        "last_flush": runtime.inbox.last_flush,
    }
    return render(request, "inbox.html", context, operator=operator)


@router.get("/payments", response_class=HTMLResponse, name="payments_page")
async def payments_page(request: Request, operator: SignedIn) -> Response:
    return await _payments(request, operator, problem=None)


async def _payments(
    request: Request, operator: Operator, *, problem: str | None, status: int = 200
) -> Response:
    money = runtime_of(request).console_money
    context = {
        "by_day": await money.payments_by_day(),
        "open": await money.exceptions(resolved=False),
        "resolved": await money.exceptions(resolved=True),
        "problem": problem,
    }
    return render(request, "payments.html", context, operator=operator, status=status)


@router.post("/payments/exceptions/{exception_id}", response_class=HTMLResponse)
async def resolve_exception(
    request: Request,
    exception_id: int,
    operator: SignedIn,
    resolution: Annotated[str, Form(min_length=3, max_length=500)],
) -> Response:
    await may_change(request, operator)
    runtime = runtime_of(request)
    address = client_ip(request, runtime.settings)
    try:
        await runtime.console_money.resolve(exception_id, resolution, operator.name, address)
    except StaleEdit as stale:
        return await _payments(request, operator, problem=str(stale), status=409)
    return RedirectResponse(request.url_for("payments_page"), status_code=303)


@router.get("/catalogue", response_class=HTMLResponse, name="catalogue_page")
async def catalogue_page(request: Request, operator: SignedIn) -> Response:
    products = await runtime_of(request).console_queries.products()
    return render(
        request, "catalogue.html", {"products": products, "problem": None}, operator=operator
    )


@router.post("/catalogue/{sku}", response_class=HTMLResponse)
async def edit_product(
    request: Request,
    sku: str,
    operator: SignedIn,
    seen_price: Annotated[int, Form(ge=0)],
    seen_stock: Annotated[int, Form(ge=0)],
    unit_price: Annotated[int, Form(ge=0, le=10**12)],
    stock: Annotated[int, Form(ge=0, le=10**9)],
) -> Response:
    await may_change(request, operator)
    runtime = runtime_of(request)
    try:
        await runtime.console_queries.edit_product(
            sku,
            seen={"unit_price": seen_price, "stock": seen_stock},
            wanted={"unit_price": unit_price, "stock": stock},
            operator=operator.name,
            address=client_ip(request, runtime.settings),
        )
    except StaleEdit as stale:
        products = await runtime.console_queries.products()
        context = {"products": products, "problem": str(stale)}
        return render(request, "catalogue.html", context, operator=operator, status=409)
    return RedirectResponse(request.url_for("catalogue_page"), status_code=303)


@router.get("/audit", response_class=HTMLResponse, name="audit_page")
async def audit_page(request: Request, operator: SignedIn) -> Response:
    actions = await runtime_of(request).console_queries.audit_trail()
    return render(request, "audit.html", {"actions": actions}, operator=operator)
