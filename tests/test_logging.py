"""Log lines an operator can search: JSON, one event a line, tagged by request, nothing secret."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from support import (
    INBOUND_PATH,
    TWILIO_TOKEN,
    app_client,
    encode,
    inbound_form,
    running_server,
    signed_headers,
)
from whatsorder import observability
from whatsorder_idempotency import IdempotencyEvent

PHONE = "+919876543210"
SENDER = f"whatsapp:{PHONE}"
FIELDS = ("time", "level", "event", "logger", "request_id", "webhook_type", "outcome", "key_hash")


class Captured:
    """Everything logged while the test runs, formatted as the service formats it."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    capture = Captured(observability.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture.handler)
    root.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        root.removeHandler(capture.handler)
        root.setLevel(level)


def assert_nothing_secret(text: str, *secrets: str) -> None:
    for secret in (TWILIO_TOKEN, PHONE, PHONE.removeprefix("+"), *secrets):
        assert secret not in text


async def post(
    client: httpx.AsyncClient, pairs: list[tuple[str, str]], **headers: str
) -> httpx.Response:
    signed = signed_headers(INBOUND_PATH, pairs) | headers
    return await client.post(INBOUND_PATH, content=encode(pairs), headers=signed)


async def test_a_request_logs_json_lines_tagged_with_its_echoed_request_id(
    app_factory: Callable[..., FastAPI], captured: Captured
) -> None:
    sid = "SM" + "c" * 32
    order = inbound_form("ORDER 1 x TOOR-1KG", sid=sid, sender=SENDER)
    signature = signed_headers(INBOUND_PATH, order)["X-Twilio-Signature"]
    async with app_client(app_factory(rate_limit_per_sender="1/minute")) as client:
        first = await post(client, order, **{"X-Request-ID": "req-first.1"})
        replay = await post(client, order, **{"X-Request-ID": "req-replay.2"})
        limited = await post(client, inbound_form("MENU", sender=SENDER))

    assert first.headers["x-request-id"] == "req-first.1"
    assert replay.headers["x-request-id"] == "req-replay.2"
    generated = limited.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)

    lines = captured.lines()
    for line in lines:
        assert set(FIELDS) <= set(line), line
        assert datetime.fromisoformat(line["time"]).utcoffset() is not None
        assert line["time"].endswith("Z")
    by_event = {(line["event"], line["request_id"]): line for line in lines}
    new = by_event["Idempotency key is new", "req-first.1"]
    hit = by_event["Idempotency cache hit", "req-replay.2"]
    for line, outcome in ((new, "new"), (hit, "replayed")):
        assert line["level"] == "INFO"
        assert line["logger"] == "whatsorder.observability"
        assert line["webhook_type"] == "twilio_inbound"
        assert line["outcome"] == outcome
        assert re.fullmatch(r"[0-9a-f]{16}", line["key_hash"])
    assert new["key_hash"] == hit["key_hash"]
    assert by_event["Order created", "req-first.1"]["order_id"] == 1
    rate_limited = by_event["Rate limited", generated]
    assert rate_limited["sender"] == "whatsapp:+********3210"
    assert_nothing_secret(captured.text, signature, sid)


async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "no spaces\tor tabs"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    long = await client.get("/healthz", headers={"X-Request-ID": "x" * 129})
    assert long.headers["x-request-id"] != "x" * 129


def test_store_and_handler_errors_log_error_in_idempotency(captured: Captured) -> None:
    with observability.request_context("req-error"):
        for outcome in (
            "store_busy",
            "store_unavailable",
            "handler_error",
            "in_flight",
            "mismatch",
        ):
            observability.on_idempotency_event(
                IdempotencyEvent("twilio_inbound", outcome, "0123456789abcdef", 0.002, 0.003)
            )
    lines = captured.lines()
    assert [(line["event"], line["level"]) for line in lines[:3]] == [
        ("Error in idempotency", "ERROR")
    ] * 3
    assert all(line["level"] == "INFO" for line in lines[3:])
    assert all(line["request_id"] == "req-error" for line in lines)
    assert lines[0]["lookup_ms"] == 2.0


def test_phone_numbers_are_masked_in_messages_and_tracebacks(captured: Captured) -> None:
    log = logging.getLogger("whatsorder.test")
    try:
        raise ValueError(f"INSERT failed for ('{SENDER}', 919876543210)")
    except ValueError:
        log.exception("insert of %s failed", SENDER)
    (line,) = captured.lines()
    assert line["event"] == "insert of whatsapp:+********3210 failed"
    assert "********3210" in line["exception"]
    assert_nothing_secret(captured.text)
    assert observability.mask_phone("ORD-000123 at 2025") == "ORD-000123 at 2025"


def test_a_terminal_gets_readable_lines_with_the_same_fields() -> None:
    capture = Captured(observability.TextFormatter())
    log = logging.getLogger("whatsorder.test.text")
    log.addHandler(capture.handler)
    log.propagate = False
    try:
        with observability.request_context("req-text"):
            log.warning("Idempotency cache hit", extra={"key_hash": "abcd", "sender": SENDER})
    finally:
        log.removeHandler(capture.handler)
        log.propagate = True
    text = capture.text
    assert "WARNING" in text
    assert "Idempotency cache hit" in text
    assert "request_id=req-text" in text
    assert "key_hash=abcd" in text
    assert "sender=whatsapp:+********3210" in text


@pytest.mark.slow
def test_a_served_request_logs_json_lines_access_log_included(
    database_url: str, tmp_path: Path
) -> None:
    pairs = inbound_form("ORDER 1 x TOOR-1KG", sender=SENDER)
    headers = signed_headers(INBOUND_PATH, pairs) | {"X-Request-ID": "served-1"}
    log_path = tmp_path / "server.log"
    with running_server(database_url, log_path, WHATSORDER_LOG_FORMAT="json") as server:
        response = httpx.post(
            server.base_url + INBOUND_PATH, content=encode(pairs), headers=headers, timeout=10
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "served-1"

    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(set(FIELDS) <= set(line) for line in lines)
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # uvicorn's own lines too
    mine = [line for line in lines if line["request_id"] == "served-1"]
    events = {line["event"] for line in mine}
    assert {"Idempotency key is new", "Order created", "HTTP request"} <= events
    (access,) = [line for line in mine if line["logger"] == "uvicorn.access"]
    assert (access["method"], access["path"], access["status"]) == ("POST", INBOUND_PATH, 200)
    assert_nothing_secret(text, headers["X-Twilio-Signature"])


async def test_an_unexpected_error_is_logged_with_the_request_id_and_nothing_secret(
    client: httpx.AsyncClient, captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whatsorder.ordering import services

    async def fail(*_args: object) -> None:
        raise RuntimeError(f"lost the database while serving {SENDER}")

    monkeypatch.setattr(services, "receive_message", fail)
    response = await post(
        client, inbound_form("MENU", sender=SENDER), **{"X-Request-ID": "req-boom"}
    )

    assert response.status_code == 500
    lines = [line for line in captured.lines() if line["request_id"] == "req-boom"]
    events = {line["event"]: line for line in lines}
    assert events["Error in idempotency"]["outcome"] == "handler_error"
    assert "RuntimeError" in events["unhandled error"]["exception"]
    assert_nothing_secret(captured.text)
