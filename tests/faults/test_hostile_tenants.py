"""One tenant's idempotency key never reads another's stored response: the same MessageSid,
wamid or Idempotency-Key sent for another sender is refused (or kept apart), never answered
with the first sender's order; the same key on another webhook type is another key; and the
library middleware keeps tenants apart with its ``scope`` option."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from faults.hostile_support import all_providers, assert_clean_answer, row_counts
from support import (
    INBOUND_PATH,
    META_PATH,
    RAZORPAY_PATH,
    STATUS_PATH,
    STRIPE_PATH,
    app_client,
    encode,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_text_message,
    new_sid,
    razorpay_event,
    razorpay_headers,
    reply_text,
    signed_headers,
    status_form,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder_idempotency import IdempotencyMiddleware, open_store

AppFactory = Callable[..., FastAPI]
ASHA, RAVI = "whatsapp:+919876543210", "whatsapp:+919812345678"


async def post_form(
    client: httpx.AsyncClient, path: str, pairs: list[tuple[str, str]], **headers: str
) -> httpx.Response:
    return await client.post(
        path, content=encode(pairs), headers=signed_headers(path, pairs) | headers
    )


@pytest.mark.parametrize("shared", ["message-sid", "idempotency-key"])
async def test_a_second_sender_reusing_a_key_never_gets_the_first_senders_order(
    app_factory: AppFactory, db: AsyncEngine, shared: str
) -> None:
    sid = new_sid()
    key = {"Idempotency-Key": "shared-key-1"} if shared == "idempotency-key" else {}
    asha = inbound_form("ORDER 2 x RICE-5KG", sid=sid, sender=ASHA, name="Asha Rao")
    ravi = inbound_form("STATUS", sid=sid if shared == "message-sid" else new_sid(), sender=RAVI)
    async with app_client(app_factory(**all_providers())) as client:
        first = await post_form(client, INBOUND_PATH, asha, **key)
        other = await post_form(client, INBOUND_PATH, ravi, **key)
        replay = await post_form(client, INBOUND_PATH, asha, **key)
    assert "Order ORD-000001" in reply_text(first)
    assert_clean_answer(other)
    assert other.status_code == 422
    assert "ORD-000001" not in other.text
    assert "Asha" not in other.text
    assert "idempotent-replayed" not in other.headers
    assert replay.content == first.content  # the owner still gets its own answer
    assert (await row_counts(db))["orders"] == 1


async def test_the_same_key_on_another_webhook_type_is_another_key(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    key = {"Idempotency-Key": "evt_shared_1"}
    order = inbound_form("ORDER 1 x RICE-5KG")
    status = status_form(new_sid(), "delivered")
    stripe = stripe_body(stripe_event(None, 100, event_id="evt_shared_1"))
    razorpay = razorpay_event(None, 100)
    async with app_client(app_factory(**all_providers())) as client:
        answers = [
            await post_form(client, INBOUND_PATH, order, **key),
            await post_form(client, STATUS_PATH, status, **key),
            await client.post(STRIPE_PATH, content=stripe, headers=stripe_headers(stripe)),
            await client.post(
                RAZORPAY_PATH, content=razorpay, headers=razorpay_headers(razorpay, "evt_shared_1")
            ),
        ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert "idempotent-replayed" not in response.headers
    assert "Order ORD-" in reply_text(answers[0])
    assert reply_text(answers[1]) == ""  # the status callback's own empty TwiML
    assert answers[2].json()["event_id"] == answers[3].json()["event_id"] == "evt_shared_1"
    counts = await row_counts(db)
    assert (counts["webhook_idempotency"], counts["payment_exceptions"]) == (4, 2)


async def test_a_wamid_reused_by_another_meta_sender_is_kept_apart_not_replayed(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    wamid = "wamid.HBgMshared"
    asha = meta_delivery([meta_text_message("ORDER 1 x RICE-5KG", wamid=wamid)])
    ravi = meta_delivery(
        [meta_text_message("STATUS", wamid=wamid, sender="919812345678")], name="Ravi"
    )
    async with app_client(app_factory(**all_providers())) as client:
        first = await client.post(META_PATH, content=asha, headers=meta_headers(asha))
        other = await client.post(META_PATH, content=ravi, headers=meta_headers(ravi))
    assert first.json() == {"received": 1, "statuses": 0, "dead_lettered": 0}
    # Meta retries anything but 200: kept as a dead letter, and Ravi gets no reply of Asha's.
    assert other.json() == {"received": 1, "statuses": 0, "dead_lettered": 1}
    counts = await row_counts(db)
    assert (counts["orders"], counts["outbox_messages"], counts["dead_letters"]) == (1, 1, 1)


def tenant_app(**options: object) -> tuple[IdempotencyMiddleware, list[str]]:
    """A tiny API whose orders belong to the caller named in ``X-Tenant``."""
    inner = FastAPI()
    runs: list[str] = []

    @inner.post("/orders", status_code=201)
    async def create(request: Request, order: dict[str, object]) -> dict[str, object]:
        tenant = request.headers["x-tenant"]
        runs.append(tenant)
        return {"tenant": tenant, "order": len(runs), **order}

    return IdempotencyMiddleware(inner, store=open_store("memory://"), **options), runs


def by_tenant(scope: dict[str, object]) -> str:
    headers = dict(scope["headers"])  # type: ignore[call-overload]
    return f"{headers.get(b'x-tenant', b'').decode('latin-1')} POST {scope['path']}"


@pytest.mark.parametrize("scoped", [True, False], ids=["scope-by-tenant", "default-scope"])
async def test_the_middleware_scope_keeps_tenants_with_the_same_key_apart(scoped: bool) -> None:
    app, runs = tenant_app(scope=by_tenant) if scoped else tenant_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

        async def order(tenant: str) -> httpx.Response:
            headers = {"Idempotency-Key": "order-1", "X-Tenant": tenant}
            return await client.post("/orders", json={"sku": "RICE-5KG"}, headers=headers)

        alpha, beta, alpha_again = await order("alpha"), await order("beta"), await order("alpha")
    assert alpha.json()["tenant"] == "alpha"
    assert alpha_again.headers["idempotent-replayed"] == "true"
    if scoped:
        assert beta.json()["tenant"] == "beta"
        assert "idempotent-replayed" not in beta.headers
        assert runs == ["alpha", "beta"]
    else:
        # Why `scope` exists: by default the key is the client's alone to choose, so a second
        # tenant sending the same key and body is answered with the first one's response.
        assert beta.json()["tenant"] == "alpha"
        assert runs == ["alpha"]
