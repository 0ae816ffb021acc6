"""The console's retailer page: a customer's language, consent and last message, for every
operator (viewers included) to read."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from whatsorder.ordering.i18n import DEFAULT_LANGUAGE, ENDONYMS
from whatsorder.web.console.rendering import render, signed_in
from whatsorder.web.console.sessions import Operator
from whatsorder.web.runtime import runtime_of

router = APIRouter()
SignedIn = Annotated[Operator, Depends(signed_in)]


@router.get("/retailers/{retailer_id}", response_class=HTMLResponse, name="retailer_page")
async def retailer_page(request: Request, retailer_id: int, operator: SignedIn) -> Response:
    retailer = await runtime_of(request).console_retailers.retailer(retailer_id)
    if retailer is None:
        reason = {"reason": f"There is no retailer {retailer_id}."}
        return render(request, "refused.html", reason, operator=operator, status=404)
    language = retailer["language"]
    context: dict[str, Any] = {
        "retailer": retailer,
        "language": ENDONYMS.get(language or DEFAULT_LANGUAGE, language),
        "language_chosen": language is not None,
    }
    return render(request, "retailer.html", context, operator=operator)
