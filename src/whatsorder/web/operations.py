"""Routes for operators: health, readiness, settings at a glance, the orders list."""

from __future__ import annotations

import hmac
from typing import Any

from alembic.runtime.migration import MigrationContext
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from whatsorder import statistics
from whatsorder.settings import secret
from whatsorder.web.openapi import problems
from whatsorder.web.problems import Problem
from whatsorder.web.runtime import runtime_of

router = APIRouter(tags=["operations"])
# Declares the Bearer scheme in /docs; require_admin does the checking and the refusing.
_BEARER = HTTPBearer(auto_error=False, description="WHATSORDER_ADMIN_TOKEN")
_ADMIN_ONLY = [Depends(_BEARER)]
_ADMIN_REFUSALS = problems(401, 403, 503)
_LISTING_REFUSALS = problems(401, 403, 422, 503, why={422: "Invalid query parameters"})


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database answers and its schema is current",
    responses={503: {"description": "Not ready: the reason says why"}},
)
async def readyz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    try:
        async with runtime.database.connect() as connection:
            current = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    except Exception as error:  # any failure means "not ready", said plainly
        return JSONResponse(
            {"status": "unavailable", "reason": f"database unreachable ({type(error).__name__})"},
            status_code=503,
        )
    expected = runtime.schema_head()
    if current != expected:
        return JSONResponse(
            {
                "status": "unavailable",
                "reason": f"schema at {current or 'nothing'}, code expects {expected}: "
                "run whatsorder migrate",
            },
            status_code=503,
        )
    return JSONResponse(
        {"status": "ready", "database": runtime.database.dialect.name, "schema": current}
    )


@router.get("/api/v1/whatsapp/test", summary="Service status and idempotency settings")
async def whatsapp_test(request: Request) -> dict[str, Any]:
    settings = runtime_of(request).settings
    return {
        "status": "ok",
        "providers": {
            "twilio": secret(settings.twilio_auth_token) is not None,
            "meta": secret(settings.meta_app_secret) is not None,
            "stripe": secret(settings.stripe_webhook_secret) is not None,
            "razorpay": secret(settings.razorpay_webhook_secret) is not None,
        },
        "idempotency": {
            "store": runtime_of(request).database.dialect.name,
            "mode": "transactional",
            "ttl_seconds": settings.idempotency_ttl_seconds,
            "in_flight_wait_seconds": settings.idempotency_wait_seconds,
            "cleanup_schedule": settings.cleanup_schedule,
        },
    }


def require_admin(request: Request) -> None:
    """Bearer ``WHATSORDER_ADMIN_TOKEN``: 503 unset, 401 missing, 403 wrong."""
    expected = secret(runtime_of(request).settings.admin_token)
    if expected is None:
        raise Problem(
            503, "admin-not-configured", "Admin API not configured", "Set WHATSORDER_ADMIN_TOKEN."
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Problem(
            401,
            "unauthenticated",
            "Authentication required",
            "Send Authorization: Bearer <admin token>.",
            {"www-authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Problem(403, "forbidden", "Forbidden", "The admin token is wrong.")


@router.get(
    "/api/v1/admin/idempotency/stats",
    summary="Idempotency statistics (Bearer admin)",
    dependencies=_ADMIN_ONLY,
    responses=_ADMIN_REFUSALS,
)
async def admin_idempotency_stats(request: Request) -> dict[str, Any]:
    require_admin(request)
    runtime = runtime_of(request)
    return await statistics.report(runtime.database, runtime.outcomes)


@router.get(
    "/api/v1/admin/dead-letters",
    summary="Unprocessable deliveries (Bearer admin)",
    dependencies=_ADMIN_ONLY,
    responses=_LISTING_REFUSALS,
)
async def admin_dead_letters(request: Request, limit: int = 50) -> dict[str, Any]:
    require_admin(request)
    rows = await runtime_of(request).recent_dead_letters(max(1, min(limit, 500)))
    return {"dead_letters": rows}


@router.get(
    "/api/v1/admin/orders",
    summary="Recent orders (Bearer admin token)",
    dependencies=_ADMIN_ONLY,
    responses=_LISTING_REFUSALS,
)
async def admin_orders(request: Request, limit: int = 50) -> dict[str, Any]:
    require_admin(request)
    rows = await runtime_of(request).recent_orders(max(1, min(limit, 500)))
    return {"orders": rows}
