"""Errors as RFC 9457 problem details, mapped to HTTP in this one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from whatsorder import routes
from whatsorder_idempotency import (
    IdempotencyError,
    InvalidKey,
    StoredResponse,
    problem_body,
    problem_for,
)
from whatsorder_idempotency.problems import PROBLEM_CONTENT_TYPE

TYPE_PREFIX = "urn:problem-type:whatsorder:"
log = logging.getLogger("whatsorder.web")


class Problem(Exception):
    """A request we refuse; ``kind`` names the stable problem type."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> Response:
        return problem_response(self.status, self.kind, self.title, self.detail, self.headers)

    def stored(self) -> StoredResponse:
        """The problem as a handler's answer, kept with its key and replayed like any other."""
        body = problem_body(TYPE_PREFIX + self.kind, self.title, self.status, self.detail)
        headers = (("content-type", PROBLEM_CONTENT_TYPE), *self.headers.items())
        return StoredResponse(self.status, body, headers)


def problem_response(
    status: int, kind: str, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    body = problem_body(TYPE_PREFIX + kind, title, status, detail)
    return Response(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


# The webhook routes and the type their refusals are filed under in the inbox.
WEBHOOK_ROUTES = {
    routes.TWILIO_INBOUND: "twilio_inbound",
    routes.TWILIO_STATUS: "twilio_status",
    routes.META: "meta",
    routes.STRIPE: "stripe",
    routes.RAZORPAY: "razorpay",
}


def _note_refusal(request: Request, status: int, kind: str) -> None:
    """A webhook refused before the engine saw it, noted in the inbox."""
    webhook_type = WEBHOOK_ROUTES.get(request.url.path)
    inbox = getattr(request.app.state, "runtime", None)
    if webhook_type is not None and inbox is not None:
        inbox.inbox.refused(webhook_type, status, kind)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json (never a stack trace)."""

    async def on_problem(request: Request, error: Exception) -> Response:
        assert isinstance(error, Problem)
        _note_refusal(request, error.status, error.kind)
        return error.response()

    async def on_idempotency(request: Request, error: Exception) -> Response:
        assert isinstance(error, IdempotencyError | InvalidKey)
        status, body, headers = problem_for(error)
        if isinstance(error, InvalidKey):  # refused before the engine: it reports the others
            _note_refusal(request, status, f"invalid-key: {error.rule}")
        return Response(body, status_code=status, headers=headers)

    async def on_http(_request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        kind = {404: "not-found", 405: "method-not-allowed"}.get(error.status_code, "http-error")
        return problem_response(
            error.status_code, kind, str(error.detail), str(error.detail), dict(error.headers or {})
        )

    async def on_validation(_request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        detail = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        return problem_response(422, "invalid-request", "Invalid request", detail)

    async def on_unexpected(_request: Request, error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return problem_response(
            500, "internal", "Internal error", "The request failed; nothing was stored. Retry it."
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(IdempotencyError, on_idempotency)
    app.add_exception_handler(InvalidKey, on_idempotency)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
