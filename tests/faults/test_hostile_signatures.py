"""Forged, truncated, stale and wrong-algorithm signatures, for every provider: all refused
with a clean 4xx, and none leaves anything behind (no idempotency record, order, payment,
dead letter or outbox message). The same request signed correctly then goes through, so each
refusal is the signature's doing and nothing else's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from faults.hostile_support import all_providers, assert_clean_answer, row_counts
from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    PUBLIC_URL,
    RAZORPAY_PATH,
    RAZORPAY_SECRET,
    STATUS_PATH,
    STRIPE_PATH,
    STRIPE_SECRET,
    TWILIO_TOKEN,
    app_client,
    encode,
    inbound_form,
    meta_delivery,
    meta_signature,
    meta_text_message,
    new_razorpay_event_id,
    new_sid,
    razorpay_event,
    razorpay_signature,
    signed_headers,
    status_form,
    stripe_body,
    stripe_event,
    stripe_v1,
)
from whatsorder.providers import twilio

AppFactory = Callable[..., FastAPI]
Headers = dict[str, str] | list[tuple[bytes, bytes]]
# name -> (headers of the attempt, the statuses it may get, problem kind)
Attempts = dict[str, tuple[Headers, int, str]]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def hmac_hex(secret: str, data: bytes, digest: str = "sha256") -> str:
    return hmac.new(secret.encode(), data, digest).hexdigest()


def truncated(signature: str) -> str:
    return signature[: len(signature) // 2]


def flipped(signature: str) -> str:
    """The same signature with its last character changed."""
    return signature[:-1] + ("0" if signature[-1] != "0" else "1")


async def refuse_all_then_accept(
    client: httpx.AsyncClient,
    db: AsyncEngine,
    path: str,
    body: bytes,
    attempts: Attempts,
    good: dict[str, str],
) -> None:
    before = await row_counts(db)
    seen = {}
    for name, (headers, status, kind) in attempts.items():
        response = await client.post(path, content=body, headers=headers)
        assert_clean_answer(response)
        seen[name] = (response.status_code, response.json().get("type", "").rsplit(":", 1)[-1])
        assert seen[name] == (status, kind), (name, response.text)
    assert await row_counts(db) == before  # no record, order, payment, letter or message
    accepted = await client.post(path, content=body, headers=good)
    assert accepted.status_code == 200, accepted.text
    assert await row_counts(db) != before


def bytes_headers(headers: dict[str, str], **raw: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with some values as raw bytes (not ASCII: no client library sends them)."""
    pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items() if k.lower() not in raw]
    return pairs + [(name.encode(), value) for name, value in raw.items()]


INVALID = (403, "signature-invalid")
MISSING = (401, "signature-missing")


@pytest.mark.parametrize("path", [INBOUND_PATH, STATUS_PATH])
async def test_twilio_refuses_forged_truncated_and_sha256_signatures(
    app_factory: AppFactory, db: AsyncEngine, path: str
) -> None:
    pairs = (
        inbound_form("ORDER 1 x RICE-5KG")
        if path == INBOUND_PATH
        else status_form(new_sid(), "sent")
    )
    body = encode(pairs)
    good = signed_headers(path, pairs)
    signature = good["X-Twilio-Signature"]
    params = twilio.FormParams.of(pairs)
    url = PUBLIC_URL + path
    data = url + "".join(f"{k}{v}" for k in sorted(params) for v in sorted(set(params[k])))
    sha256 = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), data.encode(), "sha256").digest())
    settings_header = {"X-Twilio-Webhooks-Signature-Settings": "key=x,algorithm=HMAC_SHA256"}
    attempts: Attempts = {
        "missing": ({"Content-Type": FORM}, *MISSING),
        "empty": ({**good, "X-Twilio-Signature": ""}, *MISSING),
        "forged": (signed_headers(path, pairs, token="not-the-token"), *INVALID),
        "truncated": ({**good, "X-Twilio-Signature": truncated(signature)}, *INVALID),
        "flipped": ({**good, "X-Twilio-Signature": flipped(signature)}, *INVALID),
        "other-url": (signed_headers(path, pairs, public_url="http://evil.example"), *INVALID),
        "other-body": (signed_headers(path, [*pairs, ("Extra", "1")]), *INVALID),
        # Twilio's newer HMAC-SHA256 signatures are made with a shared key we do not use:
        # one made with the auth token, even when the request claims the algorithm, is refused.
        "sha256": ({**good, "X-Twilio-Signature": sha256.decode()}, *INVALID),
        "sha256-claimed": (
            {**good, **settings_header, "X-Twilio-Signature": sha256.decode()},
            *INVALID,
        ),
        "not-ascii": (bytes_headers(good, **{"x-twilio-signature": b"\xff" * 28}), *INVALID),
    }
    async with app_client(app_factory(**all_providers())) as client:
        await refuse_all_then_accept(client, db, path, body, attempts, good)


async def test_twilio_refuses_a_signature_over_a_query_string_it_did_not_sign(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    good = signed_headers(INBOUND_PATH, pairs)
    before = await row_counts(db)
    async with app_client(app_factory(**all_providers())) as client:
        query = "?" + urlencode({"Body": "ORDER 9 x RICE-5KG"})
        response = await client.post(INBOUND_PATH + query, content=encode(pairs), headers=good)
    assert_clean_answer(response)
    assert response.status_code == 403
    assert await row_counts(db) == before


async def test_meta_refuses_forged_truncated_sha1_and_unprefixed_signatures(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    body = meta_delivery([meta_text_message("ORDER 1 x RICE-5KG")])
    good = {"X-Hub-Signature-256": meta_signature(body), "Content-Type": JSON}
    signature = good["X-Hub-Signature-256"]
    hex_only = signature.removeprefix("sha256=")
    attempts: Attempts = {
        "missing": ({"Content-Type": JSON}, *MISSING),
        "forged": ({**good, "X-Hub-Signature-256": meta_signature(body, "other")}, *INVALID),
        "truncated": ({**good, "X-Hub-Signature-256": truncated(signature)}, *INVALID),
        "flipped": ({**good, "X-Hub-Signature-256": flipped(signature)}, *INVALID),
        "unprefixed": ({**good, "X-Hub-Signature-256": hex_only}, *INVALID),
        "sha1": (
            {**good, "X-Hub-Signature-256": "sha1=" + hmac_hex(META_APP_SECRET, body, "sha1")},
            *INVALID,
        ),
        # Meta's older X-Hub-Signature (SHA-1) alone is not a signature we accept.
        "legacy-header": (
            {
                "Content-Type": JSON,
                "X-Hub-Signature": "sha1=" + hmac_hex(META_APP_SECRET, body, "sha1"),
            },
            *MISSING,
        ),
        "other-body": ({**good, "X-Hub-Signature-256": meta_signature(body + b" ")}, *INVALID),
        "not-ascii": (
            bytes_headers(good, **{"x-hub-signature-256": b"sha256=" + b"\xe9" * 64}),
            *INVALID,
        ),
    }
    async with app_client(app_factory(**all_providers())) as client:
        await refuse_all_then_accept(client, db, META_PATH, body, attempts, good)


def stripe_header(body: bytes, moment: int, *signatures: str) -> dict[str, str]:
    header = ",".join([f"t={moment}", *signatures])
    return {"Stripe-Signature": header, "Content-Type": JSON}


async def test_stripe_refuses_forged_stale_future_and_wrong_scheme_signatures(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    body = stripe_body(stripe_event(None, 100))  # no order: the event is kept as an exception
    now = int(time.time())
    v1 = stripe_v1(body, now)
    good = stripe_header(body, now, f"v1={v1}")
    # Well outside the 300 s window: the requests before these take time, and "future" must
    # still be ahead by more than 300 s when the service reads its clock.
    stale, future = now - 400, now + 400
    outside = (400, "outside-replay-window")
    attempts: Attempts = {
        "missing": ({"Content-Type": JSON}, *MISSING),
        "forged": (stripe_header(body, now, f"v1={stripe_v1(body, now, 'whsec_x')}"), *INVALID),
        "truncated": (stripe_header(body, now, f"v1={truncated(v1)}"), *INVALID),
        "flipped": (stripe_header(body, now, f"v1={flipped(v1)}"), *INVALID),
        # Correctly signed, replayed later (or dated ahead): outside the 300 s window.
        "stale": (stripe_header(body, stale, f"v1={stripe_v1(body, stale)}"), *outside),
        "future": (stripe_header(body, future, f"v1={stripe_v1(body, future)}"), *outside),
        # A fresh timestamp on an old signature: the signature covers the timestamp.
        "re-dated": (stripe_header(body, now, f"v1={stripe_v1(body, stale)}"), *INVALID),
        "v0-scheme": (stripe_header(body, now, f"v0={v1}"), *INVALID),
        "sha1": (
            stripe_header(
                body, now, "v1=" + hmac_hex(STRIPE_SECRET, f"{now}.".encode() + body, "sha1")
            ),
            *INVALID,
        ),
        "no-timestamp": ({**good, "Stripe-Signature": f"v1={v1}"}, *INVALID),
        "garbage": ({**good, "Stripe-Signature": "t=abc,v1=,,=,"}, *INVALID),
        "not-ascii": (bytes_headers(good, **{"stripe-signature": b"t=\xd9\xa1,v1=\xff"}), *INVALID),
    }
    async with app_client(app_factory(**all_providers())) as client:
        await refuse_all_then_accept(client, db, STRIPE_PATH, body, attempts, good)


async def test_razorpay_refuses_forged_truncated_and_wrong_algorithm_signatures(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    body = razorpay_event(None, 100)
    event_id = new_razorpay_event_id()
    signature = razorpay_signature(body)
    good = {
        "X-Razorpay-Signature": signature,
        "x-razorpay-event-id": event_id,
        "Content-Type": JSON,
    }
    b64 = base64.b64encode(hmac.new(RAZORPAY_SECRET.encode(), body, hashlib.sha256).digest())
    attempts: Attempts = {
        "missing": ({"x-razorpay-event-id": event_id, "Content-Type": JSON}, *MISSING),
        "forged": ({**good, "X-Razorpay-Signature": razorpay_signature(body, "x")}, *INVALID),
        "truncated": ({**good, "X-Razorpay-Signature": truncated(signature)}, *INVALID),
        "flipped": ({**good, "X-Razorpay-Signature": flipped(signature)}, *INVALID),
        "sha1": (
            {**good, "X-Razorpay-Signature": hmac_hex(RAZORPAY_SECRET, body, "sha1")},
            *INVALID,
        ),
        "base64": ({**good, "X-Razorpay-Signature": b64.decode()}, *INVALID),
        "upper-hex": ({**good, "X-Razorpay-Signature": signature.upper()}, *INVALID),
        "other-body": (
            {**good, "X-Razorpay-Signature": razorpay_signature(body + b"\n")},
            *INVALID,
        ),
        "not-ascii": (bytes_headers(good, **{"x-razorpay-signature": b"\xff" * 64}), *INVALID),
    }
    async with app_client(app_factory(**all_providers())) as client:
        await refuse_all_then_accept(client, db, RAZORPAY_PATH, body, attempts, good)
