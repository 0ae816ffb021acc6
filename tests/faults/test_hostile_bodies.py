"""Hostile bodies: too large (declared, chunked without a length, lying), deeply nested JSON,
huge numbers of form fields, field values no database can hold, and bodies that stall.

Each gets a clear 4xx (or, for Meta, a 200 that keeps a dead letter) and never a 5xx; what is
refused stores nothing."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from faults.hostile_support import (
    all_providers,
    assert_clean_answer,
    row_counts,
    server_secrets_env,
)
from faults.modes import scaled
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
    new_razorpay_event_id,
    new_sid,
    razorpay_headers,
    reply_text,
    running_server,
    signed_headers,
    status_form,
    stripe_headers,
)
from whatsorder.web.meta import MAX_BODY_BYTES as META_MAX_BODY_BYTES

AppFactory = Callable[..., FastAPI]
LIMIT = 4096
FIELDS = scaled(30_000, 100_000)  # 100,000 empty fields fill most of the 1 MiB limit


def signed(path: str, body: bytes) -> dict[str, str]:
    """The provider's signature headers for ``body`` (Twilio's: over the form it holds)."""
    if path in (INBOUND_PATH, STATUS_PATH):
        from urllib.parse import parse_qsl

        return signed_headers(path, parse_qsl(body.decode(), keep_blank_values=True))
    if path == META_PATH:
        return meta_headers(body)
    if path == STRIPE_PATH:
        return stripe_headers(body)
    return razorpay_headers(body, new_razorpay_event_id())


def form_body(size: int) -> bytes:
    """An inbound message whose form is exactly ``size`` bytes."""
    return encode(inbound_form("a" * (size - len(encode(inbound_form(""))))))


def json_body(size: int) -> bytes:
    prefix = b'{"object":"whatsapp_business_account","entry":[],"pad":"'
    return prefix + b"a" * (size - len(prefix) - 2) + b'"}'


async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("path", [INBOUND_PATH, STATUS_PATH, META_PATH, STRIPE_PATH, RAZORPAY_PATH])
async def test_a_body_over_the_limit_gets_413_declared_chunked_or_lying_and_stores_nothing(
    app_factory: AppFactory, db: AsyncEngine, path: str
) -> None:
    limit = META_MAX_BODY_BYTES if path == META_PATH else LIMIT
    body = (json_body if path in (META_PATH, STRIPE_PATH, RAZORPAY_PATH) else form_body)(limit + 1)
    headers = signed(path, body)  # correctly signed: the size alone refuses it
    before = await row_counts(db)
    async with app_client(app_factory(**all_providers(max_body_bytes=LIMIT))) as client:
        answers = [
            await client.post(path, content=body, headers=headers),
            await client.post(path, content=chunks(body), headers=headers),  # no Content-Length
            await client.post(
                path, content=chunks(body), headers={**headers, "Content-Length": "10"}
            ),
        ]
    for response in answers:
        assert_clean_answer(response)
        assert response.status_code == 413, response.text
        assert response.json()["type"].endswith(":body-too-large")
    assert await row_counts(db) == before


@pytest.mark.parametrize("depth", [10_000, 200_000])
@pytest.mark.parametrize(
    ("path", "status"), [(STRIPE_PATH, 400), (RAZORPAY_PATH, 400), (META_PATH, 200)]
)
async def test_signed_json_nested_deeper_than_any_parser_goes_is_refused_not_a_500(
    app_factory: AppFactory, db: AsyncEngine, path: str, status: int, depth: int
) -> None:
    body = b"[" * depth + b"]" * depth
    before = await row_counts(db)
    async with app_client(app_factory(**all_providers())) as client:
        response = await client.post(path, content=body, headers=signed(path, body))
        unsigned = await client.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
    assert_clean_answer(response)
    assert response.status_code == status, response.text
    assert unsigned.status_code == 401
    after = await row_counts(db)
    if path == META_PATH:  # Meta retries all but 200 for days: kept once as a dead letter
        assert response.json()["dead_lettered"] == 1
        assert after["dead_letters"] == before["dead_letters"] + 1
    else:
        assert response.json()["detail"] == "The body is nested too deeply."
        assert after == before


async def test_a_meta_message_nested_deeply_inside_is_kept_as_a_dead_letter(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    message = meta_text_message("MENU")
    nested = "[" * 5000 + "]" * 5000
    body = meta_delivery([message]).replace(
        b'"type":"text"', f'"deep":{nested},"type":"text"'.encode()
    )
    async with app_client(app_factory(**all_providers())) as client:
        response = await client.post(META_PATH, content=body, headers=meta_headers(body))
    assert_clean_answer(response)
    assert response.status_code == 200


async def test_a_form_of_a_huge_number_of_fields_is_answered_in_seconds(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    pairs = [*inbound_form("ORDER 1 x RICE-5KG"), *((f"f{i}", "") for i in range(FIELDS))]
    body = encode(pairs)
    assert len(body) < 1024 * 1024
    async with app_client(app_factory(**all_providers())) as client:
        started = time.monotonic()
        unsigned = await client.post(
            INBOUND_PATH, content=body, headers={**signed_headers(INBOUND_PATH, pairs[:3])}
        )
        accepted = await client.post(
            INBOUND_PATH, content=body, headers=signed_headers(INBOUND_PATH, pairs)
        )
        seconds = time.monotonic() - started
    assert_clean_answer(unsigned)
    assert unsigned.status_code == 403
    assert accepted.status_code == 200
    assert "Order ORD-" in reply_text(accepted)
    assert seconds < 10
    assert (await row_counts(db))["orders"] == 1


FIELD_CASES = [
    pytest.param(INBOUND_PATH, "MessageSid", "SM\x00" + "a" * 32, id="sid-with-nul"),
    pytest.param(INBOUND_PATH, "MessageSid", "SM" + "a" * 300, id="sid-300-characters"),
    pytest.param(INBOUND_PATH, "MessageSid", "SMé" + "a" * 31, id="sid-not-ascii"),
    pytest.param(INBOUND_PATH, "From", "whatsapp:+91\x0098765", id="from-with-nul"),
    pytest.param(INBOUND_PATH, "From", "whatsapp:+" + "9" * 60, id="from-65-characters"),
    pytest.param(STATUS_PATH, "MessageSid", "SM\x00" + "b" * 32, id="status-sid-with-nul"),
    pytest.param(STATUS_PATH, "MessageStatus", "delivered\x00", id="status-with-nul"),
    pytest.param(STATUS_PATH, "MessageStatus", "d" * 40, id="status-40-characters"),
    # PostgreSQL text cannot hold NUL, and a stored request body would carry it.
    pytest.param(INBOUND_PATH, "Body", "ORDER 1 x RICE-5KG\x00", id="body-with-nul"),
    pytest.param(INBOUND_PATH, "ProfileName", "As\x00ha", id="name-with-nul"),
    pytest.param(INBOUND_PATH, "NumMedia", "0\x00", id="unused-field-with-nul"),
    pytest.param(STATUS_PATH, "ApiVersion", "2010-04-01\x00", id="status-field-with-nul"),
]


@pytest.mark.parametrize(("path", "field", "value"), FIELD_CASES)
async def test_a_signed_twilio_field_no_database_can_hold_gets_400_and_stores_nothing(
    app_factory: AppFactory, db: AsyncEngine, path: str, field: str, value: str
) -> None:
    pairs = (
        inbound_form("ORDER 1 x RICE-5KG")
        if path == INBOUND_PATH
        else status_form(new_sid(), "sent")
    )
    pairs = [(name, value if name == field else old) for name, old in pairs]
    before = await row_counts(db)
    # Request bodies stored: a NUL that reached the record made PostgreSQL answer 500.
    async with app_client(app_factory(**all_providers(store_request_bodies=True))) as client:
        response = await client.post(
            path, content=encode(pairs), headers=signed_headers(path, pairs)
        )
    assert_clean_answer(response)
    assert response.status_code == 400, response.text
    assert response.json()["type"].endswith(":malformed-webhook")
    assert field in response.json()["detail"]
    assert "\x00" not in response.text
    assert await row_counts(db) == before


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("t" * 300, id="300-characters"),
        pytest.param("with space", id="with-a-space"),
        pytest.param("", id="empty"),
    ],
)
async def test_an_unusable_twilio_idempotency_token_gets_400_and_stores_nothing(
    app_factory: AppFactory, db: AsyncEngine, token: str
) -> None:
    """The header is not covered by the signature; a column of 255 characters notes it."""
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    headers = signed_headers(INBOUND_PATH, pairs) | {"I-Twilio-Idempotency-Token": token}
    before = await row_counts(db)
    async with app_client(app_factory(**all_providers(store_request_bodies=True))) as client:
        response = await client.post(INBOUND_PATH, content=encode(pairs), headers=headers)
    assert_clean_answer(response)
    assert response.status_code == 400, response.text
    assert response.json()["type"].endswith(":malformed-webhook")
    assert "I-Twilio-Idempotency-Token" in response.json()["detail"]
    assert await row_counts(db) == before


async def test_control_characters_in_a_twilio_name_and_a_long_error_code_are_taken_not_refused(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    order = [
        (name, {"Body": "ORDER 1 x RICE-5KG", "ProfileName": "As\x07ha"}.get(name, value))
        for name, value in inbound_form("")
    ]
    status = [
        (name, "3" * 40 if name == "ErrorCode" else value)
        for name, value in status_form(new_sid(), "failed")
    ]
    if not any(name == "ErrorCode" for name, _ in status):
        status.append(("ErrorCode", "3" * 40))
    async with app_client(app_factory(**all_providers())) as client:
        placed = await client.post(
            INBOUND_PATH, content=encode(order), headers=signed_headers(INBOUND_PATH, order)
        )
        noted = await client.post(
            STATUS_PATH, content=encode(status), headers=signed_headers(STATUS_PATH, status)
        )
    assert placed.status_code == 200, placed.text
    assert "Order ORD-" in reply_text(placed)
    assert noted.status_code == 200, noted.text
    assert (await row_counts(db))["message_statuses"] == 1


# ---------------------------------------------------------------------------------------------
# A body that stalls, against a real server


def stalled_request(base_url: str, path: str, sent: bytes, declared: int | None) -> socket.socket:
    """Headers and the first bytes of a body, then nothing more: the socket is left open."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    length = (
        f"Content-Length: {declared}\r\n"
        if declared is not None
        else "Transfer-Encoding: chunked\r\n"
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nX-Hub-Signature-256: sha256=00\r\n{length}\r\n"
    )
    chunk = sent if declared is not None else f"{len(sent):x}\r\n".encode() + sent + b"\r\n"
    sock.sendall(head.encode() + chunk)
    return sock


def answer_or_close(sock: socket.socket) -> tuple[bytes, float]:
    """The server's whole answer (or what it sent before closing), and how long it took."""
    started = time.monotonic()
    received = b""
    while not _complete(received):
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        received += data
    return received, time.monotonic() - started


def _complete(received: bytes) -> bool:
    head, separator, body = received.partition(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        if separator and line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


@pytest.mark.slow
def test_a_body_that_stalls_gets_408_in_bounded_time_and_the_worker_serves_others(
    sqlite_template: Path, tmp_path: Path
) -> None:
    from faults.hostile_support import sqlite_copy

    database_url = sqlite_copy(sqlite_template, tmp_path)
    env = server_secrets_env(WHATSORDER_BODY_READ_TIMEOUT_SECONDS="2")
    with running_server(database_url, tmp_path / "server.log", **env) as server:
        # A declared length never reached, and a chunked body whose next chunk never comes.
        stalled = [
            stalled_request(server.base_url, path, b'{"obj', declared)
            for path in (META_PATH, STRIPE_PATH, INBOUND_PATH)
            for declared in (4096, None)
        ]
        # Meanwhile the one worker answers everyone else at once.
        healthy = httpx.get(server.base_url + "/healthz", timeout=5)
        assert healthy.status_code == 200
        for sock in stalled:
            with sock:
                received, seconds = answer_or_close(sock)
            assert seconds < 10, "the server waited for the stalled body without bound"
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), received[:300]
            assert b"application/problem+json" in head
            problem = json.loads(body)
            assert problem["type"].endswith(":body-timeout")
