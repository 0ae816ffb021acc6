"""IdempotencyMiddleware in front of a plain FastAPI app: IETF draft semantics, end to end."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from whatsorder_idempotency import IdempotencyMiddleware


class Effects:
    """What the app did: the user's ground truth."""

    def __init__(self) -> None:
        self.created: list[dict[str, object]] = []
        self.numbers = itertools.count(1)


def order_app(effects: Effects, *, delay: float = 0.0) -> FastAPI:
    app = FastAPI()

    @app.post("/orders")
    async def create(request: Request) -> JSONResponse:
        payload = await request.json()
        await asyncio.sleep(delay)
        if payload.get("fail") == "crash":
            raise RuntimeError("handler crashed")
        if payload.get("fail") == "503":
            return JSONResponse({"error": "try later"}, status_code=503)
        if payload.get("quantity", 0) <= 0:
            return JSONResponse({"error": "quantity must be positive"}, status_code=400)
        order = {"id": next(effects.numbers), **payload}
        effects.created.append(order)
        return JSONResponse(
            order,
            status_code=201,
            headers={"Location": f"/orders/{order['id']}", "Set-Cookie": "session=abc"},
        )

    @app.put("/orders/1")
    async def replace() -> dict[str, str]:
        effects.created.append({"put": True})
        return {"ok": "yes"}

    @app.post("/export")
    async def export() -> StreamingResponse:
        effects.created.append({"export": True})

        async def rows() -> AsyncIterator[bytes]:
            for number in range(2000):
                yield f"row {number:06d}\n".encode()

        return StreamingResponse(rows(), media_type="text/csv")

    return app


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/keys.db"


@asynccontextmanager
async def client_for(app: IdempotencyMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await app.store.close()


async def test_a_retry_replays_status_body_and_safe_headers_only(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        headers = {"Idempotency-Key": '"order-7"'}
        first = await client.post("/orders", json={"quantity": 2}, headers=headers)
        second = await client.post("/orders", json={"quantity": 2}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["location"] == "/orders/1"
    assert second.headers["content-type"] == "application/json"
    assert second.headers["idempotent-replayed"] == "true"
    assert "set-cookie" not in second.headers  # never replayed
    assert "idempotent-replayed" not in first.headers
    assert len(effects.created) == 1


async def test_a_bare_token_and_the_x_header_name_the_same_key(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        await client.post("/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k1"})
        replay = await client.post(
            "/orders", json={"quantity": 1}, headers={"X-Idempotency-Key": "k1"}
        )
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(effects.created) == 1


async def test_the_same_key_with_another_payload_gets_422(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        await client.post("/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k"})
        other = await client.post("/orders", json={"quantity": 5}, headers={"Idempotency-Key": "k"})
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert set(other.json()) >= {"type", "title", "status", "detail"}
    assert len(effects.created) == 1


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        ({}, "missing"),
        ({"Idempotency-Key": ""}, "empty"),
        ({"Idempotency-Key": "k" * 256}, "too-long"),
        ({"Idempotency-Key": '"unterminated'}, "malformed-structured-field"),
        ({"Idempotency-Key": 'a"b'}, "malformed-structured-field"),
        ({"Idempotency-Key": '"tab\there"'}, "not-visible-ascii"),
        ({"Idempotency-Key": "a b"}, "not-visible-ascii"),
        ({"Idempotency-Key": "a, b"}, "not-an-item"),
        ({"Idempotency-Key": '"a","b"'}, "not-an-item"),
        ({"Idempotency-Key": "(a b)"}, "not-an-item"),
        ({"Idempotency-Key": '"abc";v=1'}, "parameters-not-allowed"),
        ({"Idempotency-Key": "abc;x=1"}, "parameters-not-allowed"),
        ({"Idempotency-Key": "?1"}, "wrong-item-type"),
        ({"Idempotency-Key": ":aGk=:"}, "wrong-item-type"),
        ({"Idempotency-Key": "@1700000000"}, "wrong-item-type"),
        ({"Idempotency-Key": '%"x"'}, "wrong-item-type"),
        ([("Idempotency-Key", "a"), ("Idempotency-Key", "b")], "repeated-header"),
        ([("X-Idempotency-Key", "a"), ("X-Idempotency-Key", "b")], "repeated-header"),
        ([("Idempotency-Key", "a"), ("X-Idempotency-Key", '"b"')], "conflicting-headers"),
    ],
)
async def test_a_missing_or_malformed_key_gets_400_naming_the_rule(
    store_url: str, headers: dict[str, str] | list[tuple[str, str]], rule: str
) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url, required=True)
    async with client_for(app) as client:
        response = await client.post("/orders", json={"quantity": 1}, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith(":invalid-key")
    assert problem["rule"] == rule
    assert problem["status"] == 400
    assert effects.created == []


UUID = "8e03978e-40d5-43e8-bc93-6894a57f9324"  # starts with a digit: no RFC 9651 Item


@pytest.mark.parametrize(
    "retry",
    [
        {"Idempotency-Key": UUID},
        {"Idempotency-Key": f'"{UUID}"'},
        {"X-Idempotency-Key": UUID},
        [("Idempotency-Key", UUID), ("Idempotency-Key", f'"{UUID}"')],
        [("Idempotency-Key", UUID), ("X-Idempotency-Key", UUID)],
    ],
)
async def test_a_bare_uuid_starting_with_a_digit_is_a_key_and_replays(
    store_url: str, retry: dict[str, str] | list[tuple[str, str]]
) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        first = await client.post(
            "/orders", json={"quantity": 1}, headers={"Idempotency-Key": UUID}
        )
        again = await client.post("/orders", json={"quantity": 1}, headers=retry)
        stored = await app.store.get("POST /orders", UUID)
    assert first.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert stored is not None  # kept under the header's exact text
    assert len(effects.created) == 1


async def test_keys_differing_only_in_parameters_never_share_an_answer(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        answers = [
            await client.post("/orders", json={"quantity": q}, headers={"Idempotency-Key": key})
            for q, key in [(1, "abc;x=1"), (2, "abc;x=2")]
        ]
    assert [answer.json()["rule"] for answer in answers] == ["parameters-not-allowed"] * 2
    assert effects.created == []


async def test_without_a_key_an_optional_middleware_lets_the_request_through(
    store_url: str,
) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        await client.post("/orders", json={"quantity": 1})
        await client.post("/orders", json={"quantity": 1})
    assert len(effects.created) == 2


async def test_put_and_other_methods_pass_through_untouched(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url, required=True)
    async with client_for(app) as client:
        first = await client.put("/orders/1", headers={"Idempotency-Key": "p"})
        second = await client.put("/orders/1", headers={"Idempotency-Key": "p"})
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in second.headers
    assert len(effects.created) == 2


async def test_a_4xx_is_kept_and_replayed_but_a_5xx_or_crash_is_not(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        bad = await client.post("/orders", json={"quantity": 0}, headers={"Idempotency-Key": "a"})
        bad_again = await client.post(
            "/orders", json={"quantity": 0}, headers={"Idempotency-Key": "a"}
        )
        unavailable = await client.post(
            "/orders", json={"quantity": 1, "fail": "503"}, headers={"Idempotency-Key": "b"}
        )
        crashed = await client.post(
            "/orders", json={"quantity": 1, "fail": "crash"}, headers={"Idempotency-Key": "c"}
        )
        retried_503 = await client.post(
            "/orders", json={"quantity": 1, "fail": "503"}, headers={"Idempotency-Key": "b"}
        )
    assert bad.status_code == 400
    assert bad_again.headers["idempotent-replayed"] == "true"
    assert unavailable.status_code == 503
    assert crashed.status_code == 500
    assert retried_503.status_code == 503
    assert "idempotent-replayed" not in retried_503.headers  # ran again: nothing was kept


async def test_concurrent_duplicates_run_the_handler_once(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects, delay=0.2), store=store_url)
    async with client_for(app) as client:
        responses = await asyncio.gather(
            *(
                client.post("/orders", json={"quantity": 3}, headers={"Idempotency-Key": "storm"})
                for _ in range(20)
            )
        )
    assert {response.status_code for response in responses} == {201}
    assert len({response.content for response in responses}) == 1
    assert len(effects.created) == 1


async def test_a_duplicate_still_in_flight_after_the_wait_gets_409_with_retry_after(
    store_url: str,
) -> None:
    from datetime import timedelta

    effects = Effects()
    app = IdempotencyMiddleware(
        order_app(effects, delay=0.5), store=store_url, in_flight_wait=timedelta(seconds=0.1)
    )
    async with client_for(app) as client:
        first = asyncio.create_task(
            client.post("/orders", json={"quantity": 1}, headers={"Idempotency-Key": "slow"})
        )
        await asyncio.sleep(0.1)
        duplicate = await client.post(
            "/orders", json={"quantity": 1}, headers={"Idempotency-Key": "slow"}
        )
        original: Response = await first  # type: ignore[assignment]
    assert duplicate.status_code == 409
    assert int(duplicate.headers["retry-after"]) >= 1
    assert duplicate.headers["content-type"] == "application/problem+json"
    assert original.status_code == 201
    assert len(effects.created) == 1


async def test_a_response_over_the_size_limit_streams_unstored_and_is_never_rerun(
    store_url: str,
) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url, max_stored_bytes=1024)
    async with client_for(app) as client:
        first = await client.post("/export", headers={"Idempotency-Key": "big"})
        retry = await client.post("/export", headers={"Idempotency-Key": "big"})
    assert first.status_code == 200
    assert first.text.count("\n") == 2000  # the client got all of it
    assert first.headers["idempotency-stored"] == "false"
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["idempotency-stored"] == "false"
    assert retry.content == b""
    assert len(effects.created) == 1


async def test_keys_are_scoped_by_route_by_default(store_url: str) -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store=store_url)
    async with client_for(app) as client:
        await client.post("/orders", json={"quantity": 1}, headers={"Idempotency-Key": "same"})
        export = await client.post("/export", headers={"Idempotency-Key": "same"})
    assert export.status_code == 200
    assert "idempotent-replayed" not in export.headers


async def test_a_tenant_scope_keeps_one_tenants_responses_from_another(store_url: str) -> None:
    effects = Effects()

    def per_tenant(scope: dict[str, object]) -> str:
        headers = dict(scope["headers"])  # type: ignore[call-overload]
        return f"tenant={headers.get(b'x-tenant', b'').decode()} {scope['method']} {scope['path']}"

    app = IdempotencyMiddleware(order_app(effects), store=store_url, scope=per_tenant)
    async with client_for(app) as client:
        a = await client.post(
            "/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k", "X-Tenant": "a"}
        )
        b = await client.post(
            "/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k", "X-Tenant": "b"}
        )
    assert "idempotent-replayed" not in b.headers
    assert a.json()["id"] != b.json()["id"]
    assert len(effects.created) == 2


async def test_an_unreachable_store_fails_closed_with_503() -> None:
    effects = Effects()
    app = IdempotencyMiddleware(order_app(effects), store="postgresql://nobody@127.0.0.1:1/nothing")
    async with client_for(app) as client:
        response = await client.post(
            "/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k"}
        )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert effects.created == []


async def test_an_unreachable_store_can_be_told_to_fail_open() -> None:
    effects = Effects()
    app = IdempotencyMiddleware(
        order_app(effects), store="postgresql://nobody@127.0.0.1:1/nothing", fail_open=True
    )
    async with client_for(app) as client:
        response = await client.post(
            "/orders", json={"quantity": 1}, headers={"Idempotency-Key": "k"}
        )
    assert response.status_code == 201
    assert len(effects.created) == 1


async def test_a_body_cut_short_by_a_disconnect_is_neither_run_nor_kept(store_url: str) -> None:
    """The client went away mid-body: the part that came is not the request (a truncated form
    can still parse), so the app never sees it, nothing is answered and no key is taken."""
    effects = Effects()
    middleware = IdempotencyMiddleware(order_app(effects), store=store_url)
    sent: list[dict[str, object]] = []
    messages = iter(
        [
            {"type": "http.request", "body": b'{"item": "rice", "quan', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = [(b"idempotency-key", b"cut-1"), (b"content-type", b"application/json")]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/orders",
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-length", b"40")],
        "client": ("127.0.0.1", 4321),
    }
    try:
        await middleware(scope, receive, send)
        assert sent == []
        assert effects.created == []
        assert await middleware.store.get("POST /orders", "cut-1") is None
    finally:
        await middleware.store.close()
