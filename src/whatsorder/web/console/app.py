"""The operator console at ``/console``: a server-rendered sub-application of the service.

Jinja2 pages (autoescaped: customer text is always shown as text), htmx vendored under
``static/`` (no CDN, no build step), a strict Content-Security-Policy with no inline script,
and a ``Server-Timing`` header.
Without ``WHATSORDER_CONSOLE_SECRET`` (the key that signs its session cookies) the console
answers 503 and says what to set. Pages live in ``pages.py``; sign-in in ``sessions.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whatsorder.settings import secret
from whatsorder.web.console import (
    dead_letter_pages,
    fulfilment_pages,
    health_pages,
    pages,
    payment_link_pages,
    retailer_pages,
)
from whatsorder.web.console.rendering import NotAllowed, SignInRequired, index_routes, render
from whatsorder.web.runtime import Runtime

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def build_console(runtime: Runtime) -> ASGIApp:
    """The console, or (no signing key set) a page that says how to switch it on."""
    key = secret(runtime.settings.console_secret)
    if key is None:
        return _not_configured
    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.state.runtime = runtime
    console.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    console.include_router(pages.router)
    console.include_router(health_pages.router)
    console.include_router(dead_letter_pages.router)
    console.include_router(retailer_pages.router)
    console.include_router(fulfilment_pages.router)
    console.include_router(payment_link_pages.router)
    routers = [
        pages.router,
        health_pages.router,
        dead_letter_pages.router,
        retailer_pages.router,
        fulfilment_pages.router,
        payment_link_pages.router,
    ]
    index_routes(console, routers)

    @console.exception_handler(SignInRequired)
    async def sign_in_first(request: Request, _error: SignInRequired) -> Response:
        return RedirectResponse(request.url_for("sign_in_form"), status_code=303)

    @console.exception_handler(NotAllowed)
    async def not_allowed(request: Request, error: NotAllowed) -> Response:
        return render(request, "refused.html", {"reason": str(error)}, status=error.status)

    console.add_middleware(
        SessionMiddleware,
        secret_key=key,
        session_cookie="whatsorder_console",
        max_age=12 * 3600,  # and idle after 30 minutes: sessions.IDLE_TIMEOUT_SECONDS
        path="/console",
        same_site="strict",
        https_only=runtime.settings.require_https,
    )
    console.add_middleware(SecurityHeaders)
    console.add_middleware(ServerTiming)
    return console


class ServerTiming:
    """``Server-Timing: app;dur=<ms>`` on every console answer: the time from the request's
    arrival to its answer's headers (queries and template included), so a page's own cost can
    be read apart from the network's (the benchmark reads it; so can a browser's dev tools)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - started) * 1000
                headers = [
                    *message.get("headers", []),
                    (b"server-timing", f"app;dur={took:.1f}".encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


class SecurityHeaders:
    """Every console answer, pages, static files and refusals alike, with the headers above."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.decode("latin-1").lower() not in SECURITY_HEADERS
                ]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


async def _not_configured(scope: Scope, receive: Receive, send: Send) -> None:
    body = (
        "<!doctype html><html lang=en><title>Console not configured</title>"
        "<h1>The console is not configured</h1><p>Set WHATSORDER_CONSOLE_SECRET (a long random "
        "string that signs the console's session cookies) and restart the service.</p></html>"
    )
    response: Any = HTMLResponse(body, status_code=503, headers=SECURITY_HEADERS)
    await response(scope, receive, send)
