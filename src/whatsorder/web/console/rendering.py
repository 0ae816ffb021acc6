"""How console pages are drawn and who may see them: templates, the signed-in operator, refusals."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from babel.numbers import format_currency
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context

from whatsorder.clock import as_utc
from whatsorder.operators import Role
from whatsorder.privacy import mask_phone
from whatsorder.web.console import sessions
from whatsorder.web.console.sessions import Operator
from whatsorder.web.runtime import runtime_of

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")


def _money(amount: int | None, currency: str = "INR") -> str:
    """Minor units (paise, cents) as the operator reads money: ``₹48.00``."""
    if amount is None:
        return "—"
    return format_currency(Decimal(amount) / 100, currency, locale="en_IN")


def _when(moment: Any) -> str:
    return "—" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M UTC")


@pass_context
def _url_for(context: Any, name: str, /, **path_params: Any) -> str:
    """Starlette's ``url_for``, by a name-to-route index: FastAPI finds a route by walking every
    route of every included router, about half a millisecond a link, which a list of 200 rows
    with two links each turned into a tenth of a second. Path-absolute, under the console's
    mount (and any root path a proxy gives)."""
    request: Request = context["request"]
    route: APIRoute | None = request.app.state.routes_by_name.get(name)
    if route is None:  # the static files' mount, and any route outside the index
        return str(request.url_for(name, **path_params))
    root: str = request.scope.get("root_path", "")
    return root + str(route.url_path_for(name, **path_params))


def index_routes(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Give ``url_for`` the routes of ``routers``, included in ``app`` with no prefix."""
    app.state.routes_by_name = {
        route.name: route
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
    }


templates.env.globals["url_for"] = _url_for
templates.env.filters["money"] = _money
templates.env.filters["when"] = _when
templates.env.filters["masked"] = mask_phone


class SignInRequired(Exception):
    """No operator is signed in (or the session went idle): the page sends them to sign in."""


class NotAllowed(Exception):
    """Signed in, but this operator may not do this (a viewer changing something, a bad CSRF)."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.status = status


async def signed_in(request: Request) -> Operator:
    """The operator of this session, as the database has it now; FastAPI dependency."""
    name = sessions.signed_in_name(request)
    if name is None:
        raise SignInRequired
    row = await runtime_of(request).console_queries.operator(name)
    if row is None or row["disabled_at"] is not None:
        sessions.end(request)
        raise SignInRequired
    return Operator(name=row["name"], role=Role(row["role"]))


async def may_change(request: Request, operator: Operator) -> None:
    """Refuse a change from a viewer, or from a form without this session's CSRF token."""
    form = await request.form()
    sent = form.get("csrf_token")
    if not sessions.csrf_matches(request, sent if isinstance(sent, str) else None):
        raise NotAllowed(
            "This form is out of date or did not come from the console (its CSRF token is "
            "missing or wrong). Reload the page and try again."
        )
    if not operator.may_change:
        raise NotAllowed(
            f"{operator.name} is a viewer: viewers can look at everything but change nothing."
        )


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    operator: Operator | None = None,
    status: int = 200,
) -> HTMLResponse:
    page = {"operator": operator, "csrf_token": sessions.csrf_token(request), **context}
    return templates.TemplateResponse(request, template, page, status_code=status)
