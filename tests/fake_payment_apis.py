"""Fake Stripe and Razorpay APIs for payment links, on 127.0.0.1, behaving as the real ones do
for these calls.

- Stripe ``POST /v1/checkout/sessions`` (form-encoded, Bearer key) honours ``Idempotency-Key``:
  the same key with the same parameters gets the first answer back and creates nothing; with
  other parameters, 400 ``idempotency_error``; while the first request with a key is still being
  answered, a second gets 409 (Stripe: "a request with this key is in progress").
- Razorpay ``POST /v1/payment_links`` (JSON, basic auth) refuses a second link with a
  ``reference_id`` it holds (400 ``BAD_REQUEST_ERROR``); ``GET /v1/payment_links?reference_id=``
  lists the links holding one.

Payments and refunds are made with ``pay`` and ``refund`` (what customers do at the provider),
and listed as the APIs list them: Stripe's PaymentIntents and Refunds (``created[gte|lte]``),
Razorpay's Payments and Refunds (``from``, ``to``, ``count``, ``skip``).

``failures`` answers the next requests with these statuses before any works; ``lose_answers``
creates the link but answers 502 instead of it, as a crash or a cut connection between the
provider's acceptance and our commit would look. ``created`` counts what a customer could be
sent: every link really created.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

STRIPE_KEY = "sk_test_fake_links"
RAZORPAY_KEY = ("rzp_test_fake", "fake-razorpay-secret")


@dataclass
class FakePaymentApis:
    created: list[dict[str, Any]] = field(default_factory=list)  # every link really created
    requests: list[tuple[str, str]] = field(default_factory=list)  # (provider, path) of each call
    failures: list[int] = field(default_factory=list)
    lose_answers: int = 0
    delay: float = 0.0  # seconds each create takes, to let requests overlap
    _stripe_answers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    _stripe_in_flight: set[str] = field(default_factory=set)
    _razorpay_references: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    payments: list[dict[str, Any]] = field(default_factory=list)  # what customers paid
    refunds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/checkout/sessions", self._stripe_create, methods=["POST"]),
                Route("/v1/payment_links", self._razorpay_create, methods=["POST"]),
                Route("/v1/payment_links", self._razorpay_list, methods=["GET"]),
                Route("/v1/payment_intents", self._stripe_intents, methods=["GET"]),
                Route("/v1/payment_intents/{id}", self._stripe_intent, methods=["GET"]),
                Route("/v1/refunds", self._refunds, methods=["GET"]),
                Route("/v1/payments", self._razorpay_payments, methods=["GET"]),
                Route("/v1/payments/{id}", self._razorpay_payment, methods=["GET"]),
            ]
        )

    # What customers do at the provider: pay (by a link or any other way), and get refunds.

    def pay(
        self, provider: str, order_number: str | None, amount: int, *, created: int = 1_800_000_000
    ) -> str:
        """A payment the provider holds, naming ``order_number`` (None: names no order)."""
        number = next(self._ids)
        if provider == "stripe":
            payment: dict[str, Any] = {
                "id": f"pi_fake{number}",
                "object": "payment_intent",
                "amount": amount,
                "amount_received": amount,
                "currency": "inr",
                "status": "succeeded",
                "metadata": {} if order_number is None else {"order_id": order_number},
                "created": created,
            }
        else:
            payment = {
                "id": f"pay_fake{number}",
                "entity": "payment",
                "amount": amount,
                "currency": "INR",
                "status": "captured",
                "notes": {} if order_number is None else {"order_id": order_number},
                "created_at": created,
            }
        self.payments.append({"provider": provider, **payment})
        return str(payment["id"])

    def refund(
        self, provider: str, payment_id: str, amount: int, *, created: int = 1_800_000_100
    ) -> str:
        number = next(self._ids)
        if provider == "stripe":
            refund: dict[str, Any] = {
                "id": f"re_fake{number}",
                "object": "refund",
                "amount": amount,
                "currency": "inr",
                "payment_intent": payment_id,
                "status": "succeeded",
                "created": created,
            }
        else:
            refund = {
                "id": f"rfnd_fake{number}",
                "entity": "refund",
                "amount": amount,
                "currency": "INR",
                "payment_id": payment_id,
                "status": "processed",
                "created_at": created,
            }
        self.refunds.append({"provider": provider, **refund})
        return str(refund["id"])

    def _held(self, kind: list[dict[str, Any]], provider: str) -> list[dict[str, Any]]:
        return [
            {key: value for key, value in item.items() if key != "provider"}
            for item in kind
            if item["provider"] == provider
        ]

    async def _stripe_intents(self, request: Request) -> JSONResponse:
        return _stripe_list(request, self._held(self.payments, "stripe"))

    async def _stripe_intent(self, request: Request) -> JSONResponse:
        for intent in self._held(self.payments, "stripe"):
            if intent["id"] == request.path_params["id"]:
                return JSONResponse(intent)
        return _stripe_error(404, "invalid_request_error", "No such payment_intent")

    async def _refunds(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization", "").startswith("Bearer "):
            refunds = self._held(self.refunds, "stripe")
            intent = request.query_params.get("payment_intent")
            if intent is not None:
                refunds = [refund for refund in refunds if refund["payment_intent"] == intent]
            return _stripe_list(request, refunds)
        return self._razorpay_collection(request, self._held(self.refunds, "razorpay"))

    async def _razorpay_payments(self, request: Request) -> JSONResponse:
        return self._razorpay_collection(request, self._held(self.payments, "razorpay"))

    async def _razorpay_payment(self, request: Request) -> JSONResponse:
        for payment in self._held(self.payments, "razorpay"):
            if payment["id"] == request.path_params["id"]:
                return JSONResponse(payment)
        return _razorpay_error(400, "BAD_REQUEST_ERROR", "The id provided does not exist")

    def _razorpay_collection(self, request: Request, items: list[dict[str, Any]]) -> JSONResponse:
        if not self._razorpay_authorised(request):
            return _razorpay_error(401, "BAD_REQUEST_ERROR", "Authentication failed")
        query = request.query_params
        low, high = int(query.get("from", 0)), int(query.get("to", 2**40))
        chosen = [item for item in items if low <= item["created_at"] <= high]
        skip, count = int(query.get("skip", 0)), int(query.get("count", 10))
        page = chosen[skip : skip + count]
        return JSONResponse({"entity": "collection", "count": len(page), "items": page})

    def links(self, provider: str) -> list[dict[str, Any]]:
        return [link for link in self.created if link["provider"] == provider]

    async def _stripe_create(self, request: Request) -> JSONResponse:
        self.requests.append(("stripe", request.url.path))
        if request.headers.get("authorization") != f"Bearer {STRIPE_KEY}":
            return _stripe_error(401, "invalid_request_error", "Invalid API Key provided.")
        body = (await request.body()).decode()
        params = sorted(parse_qsl(body, keep_blank_values=True))
        key = request.headers.get("idempotency-key")
        if key is not None:
            if key in self._stripe_in_flight:
                return _stripe_error(
                    409,
                    "idempotency_error",
                    "There is currently another in-progress request "
                    "using this Stripe-Idempotency-Key.",
                )
            if key in self._stripe_answers:
                first_params, answer = self._stripe_answers[key]
                if first_params != repr(params):
                    return _stripe_error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used "
                        "with the same parameters they were first used with.",
                    )
                return JSONResponse(answer, headers={"idempotent-replayed": "true"})
            self._stripe_in_flight.add(key)
        try:
            if self.failures:
                return _stripe_error(self.failures.pop(0), "api_error", "Something went wrong.")
            await asyncio.sleep(self.delay)
            number = next(self._ids)
            form = dict(params)
            answer = {
                "id": f"cs_test_fake{number}",
                "object": "checkout.session",
                "url": f"https://checkout.stripe.test/c/pay/cs_test_fake{number}",
                "amount_total": int(form["line_items[0][price_data][unit_amount]"]),
                "currency": form["line_items[0][price_data][currency]"],
                "client_reference_id": form.get("client_reference_id"),
                "metadata": {"order_id": form.get("metadata[order_id]")},
                "payment_status": "unpaid",
                "status": "open",
            }
            self.created.append({"provider": "stripe", **answer})
            if key is not None:
                self._stripe_answers[key] = (repr(params), answer)
            if self.lose_answers:
                self.lose_answers -= 1
                return _stripe_error(502, "api_error", "Bad gateway.")
            return JSONResponse(answer)
        finally:
            if key is not None:
                self._stripe_in_flight.discard(key)

    def _razorpay_authorised(self, request: Request) -> bool:
        expected = base64.b64encode(":".join(RAZORPAY_KEY).encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    async def _razorpay_create(self, request: Request) -> JSONResponse:
        self.requests.append(("razorpay", request.url.path))
        if not self._razorpay_authorised(request):
            return _razorpay_error(401, "BAD_REQUEST_ERROR", "Authentication failed")
        if self.failures:
            return _razorpay_error(self.failures.pop(0), "SERVER_ERROR", "We are facing some issue")
        body = await request.json()
        reference = body.get("reference_id")
        await asyncio.sleep(self.delay)  # requests overlap here; the check below is one step
        if reference and reference in self._razorpay_references:
            return _razorpay_error(
                400,
                "BAD_REQUEST_ERROR",
                f"Payment Link with reference_id {reference} already exists",
            )
        if reference:
            self._razorpay_references.add(reference)
        number = next(self._ids)
        link = {
            "id": f"plink_fake{number}",
            "short_url": f"https://rzp.test/i/fake{number}",
            "amount": body["amount"],
            "currency": body["currency"],
            "reference_id": reference,
            "notes": body.get("notes", {}),
            "status": "created",
        }
        self.created.append({"provider": "razorpay", **link})
        if self.lose_answers:
            self.lose_answers -= 1
            return _razorpay_error(502, "SERVER_ERROR", "Bad gateway")
        return JSONResponse(link)

    async def _razorpay_list(self, request: Request) -> JSONResponse:
        self.requests.append(("razorpay", request.url.path))
        if not self._razorpay_authorised(request):
            return _razorpay_error(401, "BAD_REQUEST_ERROR", "Authentication failed")
        reference = request.query_params.get("reference_id")
        links = [
            {key: value for key, value in link.items() if key != "provider"}
            for link in self.links("razorpay")
            if reference is None or link["reference_id"] == reference
        ]
        return JSONResponse({"payment_links": links})


def _stripe_list(request: Request, items: list[dict[str, Any]]) -> JSONResponse:
    if request.headers.get("authorization") != f"Bearer {STRIPE_KEY}":
        return _stripe_error(401, "invalid_request_error", "Invalid API Key provided.")
    query = request.query_params
    low = int(query.get("created[gte]", 0))
    high = int(query.get("created[lte]", 2**40))
    chosen = [item for item in items if low <= item["created"] <= high]
    return JSONResponse(
        {"object": "list", "data": chosen, "has_more": False, "url": request.url.path}
    )


def _stripe_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def _razorpay_error(status: int, code: str, description: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "description": description}}, status_code=status)
