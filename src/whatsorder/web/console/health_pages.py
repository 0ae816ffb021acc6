"""The console's idempotency health page: outcomes by hour, keys in flight, lookup, cleanup."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from whatsorder.clock import utcnow
from whatsorder.scheduler import run_cleanup
from whatsorder.web.console import charts
from whatsorder.web.console.rendering import NotAllowed, may_change, render, signed_in
from whatsorder.web.console.sessions import Operator
from whatsorder.web.guards import client_ip
from whatsorder.web.runtime import runtime_of

router = APIRouter()
SignedIn = Annotated[Operator, Depends(signed_in)]


@router.get("/health", response_class=HTMLResponse, name="health_page")
async def health_page(request: Request, operator: SignedIn, key: str | None = None) -> Response:
    return await _health(request, operator, key=key)


async def _health(
    request: Request,
    operator: Operator,
    *,
    key: str | None = None,
    cleanup: dict[str, Any] | None = None,
) -> Response:
    health = runtime_of(request).console_health
    now = utcnow()
    hourly = await health.hourly(now)
    bars, tallest = charts.stacked_bars(hourly, "hour")
    context = {
        "overview": await health.overview(now),
        "bars": bars,
        "tallest": tallest,
        "series": charts.SERIES,
        "chart": {"width": charts.WIDTH, "height": charts.HEIGHT},
        "in_flight": await health.in_flight(now),
        "runs": await health.cleanup_runs(),
        "key": key,
        "found": await health.lookup(key) if key else None,
        "cleanup": cleanup,
    }
    return render(request, "health.html", context, operator=operator)


@router.post("/health/cleanup", response_class=HTMLResponse)
async def start_cleanup(
    request: Request, operator: SignedIn, dry_run: Annotated[bool, Form()] = True
) -> Response:
    """An admin's cleanup: a dry run first (it counts), then the run itself."""
    await may_change(request, operator)
    if not operator.role.is_admin():
        raise NotAllowed("Only an admin may start a cleanup.")
    runtime = runtime_of(request)
    run = await run_cleanup(
        runtime.database,
        trigger="console",
        batch_size=runtime.settings.cleanup_batch_size,
        dry_run=dry_run,
    )
    await runtime.console_queries.note(
        operator.name,
        "cleanup.dry-run" if dry_run else "cleanup.run",
        client_ip(request, runtime.settings),
    )
    done = {"dry_run": dry_run, "rows": run.rows_deleted, "stale": run.stale_removed}
    return await _health(request, operator, cleanup={**done, "outcome": run.outcome})
