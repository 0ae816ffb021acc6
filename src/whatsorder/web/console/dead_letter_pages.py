"""The console's dead letters: listed with why each cannot be processed, re-driven one at a
time or as a previewed batch (`whatsorder.web.redrive` does the re-drive itself).

A batch re-drives exactly the ids its preview showed, which its confirm form carries (at most
`MAX_BATCH`): never whatever matches the filter by the time the operator confirms.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from whatsorder.clock import utcnow
from whatsorder.redrives import (
    STATES,
    Filters,
    NoSuchDeadLetter,
    RedriveRefused,
    no_payload_reason,
)
from whatsorder.web.console.rendering import may_change, render, signed_in
from whatsorder.web.console.sessions import Operator
from whatsorder.web.guards import client_ip
from whatsorder.web.redrive import redrive
from whatsorder.web.runtime import runtime_of

router = APIRouter()
SignedIn = Annotated[Operator, Depends(signed_in)]
MAX_BATCH = 500
LISTED = 200
PROVIDERS = ("meta",)  # the only provider whose failed deliveries are kept (see the page)


class BadFilter(ValueError):
    """A filter the page cannot apply; the message says which and why."""


def _filters(request: Request) -> Filters:
    query = request.query_params
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise BadFilter(f"State must be one of {', '.join(STATES)}.")
    provider = query.get("provider") or None
    if provider is not None and provider not in PROVIDERS:
        raise BadFilter(f"Provider must be one of {', '.join(PROVIDERS)}.")
    reason = (query.get("reason") or "").strip()[:200] or None
    return Filters(
        provider, reason, _day(query, "received_from"), _day(query, "received_to"), state
    )


def _day(query: Any, name: str) -> date | None:
    text = (query.get(name) or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise BadFilter(f"{name.replace('_', ' ')} must be a date like 2026-12-03.") from error


async def _page(
    request: Request,
    operator: Operator,
    *,
    notice: str | None = None,
    problem: str | None = None,
    status: int = 200,
) -> Response:
    try:
        filters = _filters(request)
    except BadFilter as error:
        filters, problem, status = Filters(), str(error), 400
    rows, total = await runtime_of(request).dead_letter_redrives.listing(
        filters, utcnow(), limit=LISTED
    )
    for row in rows:
        row["why_not"] = None if row["has_payload"] else no_payload_reason(row)
    context = {
        "letters": rows,
        "total": total,
        "filters": filters,
        "states": STATES,
        "providers": PROVIDERS,
        "notice": notice,
        "problem": problem,
    }
    return render(request, "dead_letters.html", context, operator=operator, status=status)


@router.get("/dead-letters", response_class=HTMLResponse, name="dead_letters_page")
async def dead_letters_page(request: Request, operator: SignedIn) -> Response:
    return await _page(request, operator)


@router.post("/dead-letters/{letter_id}/redrive", response_class=HTMLResponse, name="redrive_one")
async def redrive_one(request: Request, letter_id: int, operator: SignedIn) -> Response:
    await may_change(request, operator)
    runtime = runtime_of(request)
    address = client_ip(request, runtime.settings)
    try:
        outcome = await redrive(runtime, letter_id, operator.name, address)
    except RedriveRefused as refused:
        status = 404 if isinstance(refused, NoSuchDeadLetter) else 409
        return await _page(request, operator, problem=str(refused), status=status)
    state = "re-driven" if outcome.done else "re-driven but not processed"
    return await _page(
        request, operator, notice=f"Dead letter {letter_id} {state}: {outcome.result}."
    )


@router.get("/dead-letters/preview", response_class=HTMLResponse, name="redrive_preview")
async def redrive_preview(request: Request, operator: SignedIn) -> Response:
    try:
        filters = _filters(request)
    except BadFilter as error:
        return await _page(request, operator, problem=str(error), status=400)
    rows, total = await runtime_of(request).dead_letter_redrives.listing(
        filters, utcnow(), limit=MAX_BATCH, redrivable_only=True
    )
    context = {"letters": rows, "total": total, "max_batch": MAX_BATCH, "filters": filters}
    return render(request, "redrive_preview.html", context, operator=operator)


@router.post("/dead-letters/redrive", response_class=HTMLResponse, name="redrive_batch")
async def redrive_batch(request: Request, operator: SignedIn) -> Response:
    await may_change(request, operator)
    form = await request.form()
    sent = [value for value in form.getlist("id") if isinstance(value, str)]
    if not sent or len(sent) > MAX_BATCH or not all(value.isdecimal() for value in sent):
        problem = (
            f"A batch re-drive takes the 1 to {MAX_BATCH} dead letters its preview showed. "
            "Preview again, then confirm."
        )
        return await _page(request, operator, problem=problem, status=400)
    runtime = runtime_of(request)
    address = client_ip(request, runtime.settings)
    results: list[dict[str, Any]] = []
    for letter_id in dict.fromkeys(int(value) for value in sent):
        try:
            outcome = await redrive(runtime, letter_id, operator.name, address)
        except RedriveRefused as refused:
            results.append({"id": letter_id, "state": "skipped", "result": str(refused)})
            continue
        state = "done" if outcome.done else "failed"
        results.append({"id": letter_id, "state": state, "result": outcome.result})
    counts = {
        state: sum(1 for row in results if row["state"] == state)
        for state in ("done", "failed", "skipped")
    }
    context = {"results": results, "counts": counts}
    return render(request, "redrive_summary.html", context, operator=operator)
