"""``GET /metrics`` for Prometheus, and the middleware that names and counts each request."""

from __future__ import annotations

import re
import uuid
from typing import Final

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whatsorder import observability

REQUEST_ID_HEADER: Final = "X-Request-ID"
# Routers of provider webhooks are tagged with the provider's name; their requests are counted.
WEBHOOK_PROVIDERS: Final = frozenset({"twilio", "meta", "stripe", "razorpay"})
# An id a proxy or client sends is kept if it is short and harmless in a log line.
_SANE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (every worker's, added up)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    # A plain def: FastAPI runs it in a thread, so reading the workers' files never blocks the
    # event loop. Multiprocess mode reads every worker's samples from PROMETHEUS_MULTIPROC_DIR.
    registry = REGISTRY
    if observability.MULTIPROCESS_DIR is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), media_type=content_type)


class RequestObserver:
    """Pure ASGI: an id for each request and a count of each webhook answered.

    The id comes from ``X-Request-ID`` when that is sane, else is generated; it goes into every
    log line of the request and back out in the response's ``X-Request-ID``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        with observability.request_context(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                # Starlette's outermost error handler answers 500 after this.
                _count(scope, status or 500)
                raise
            _count(scope, status or 500)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = bytes(value).decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


def _count(scope: Scope, status: int) -> None:
    route = scope.get("route")  # set by the router once it matched
    path = getattr(route, "path", None)
    provider = next(
        (tag for tag in getattr(route, "tags", None) or () if tag in WEBHOOK_PROVIDERS), None
    )
    if isinstance(path, str) and isinstance(provider, str):
        observability.record_webhook_request(provider, path, status)
