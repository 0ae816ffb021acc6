"""Shared by the hostile-input and secrets tests: every provider configured with known secrets,
requests signed as the providers sign them, what a clean refusal looks like, and the database
rows a refused request must not have written."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import fresh_postgres_database
from support import (
    ADMIN_TOKEN,
    INBOUND_PATH,
    META_APP_SECRET,
    META_PATH,
    META_VERIFY_TOKEN,
    PUBLIC_URL,
    RAZORPAY_PATH,
    RAZORPAY_SECRET,
    STATUS_PATH,
    STRIPE_PATH,
    STRIPE_SECRET,
    TWILIO_TOKEN,
    meta_signature,
    razorpay_signature,
    stripe_v1,
)
from whatsorder.db.tables import metadata
from whatsorder.providers import twilio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Every secret the service is given; none may ever be seen outside it.
SECRETS = (TWILIO_TOKEN, META_APP_SECRET, META_VERIFY_TOKEN, STRIPE_SECRET, RAZORPAY_SECRET)
SECRETS_WITH_ADMIN = (*SECRETS, ADMIN_TOKEN)
WEBHOOK_PATHS = (INBOUND_PATH, STATUS_PATH, META_PATH, STRIPE_PATH, RAZORPAY_PATH)
TWILIO_PATHS = (INBOUND_PATH, STATUS_PATH)
PROBLEM = "application/problem+json"
# What a Python stack trace or a framework's debug page looks like in a response.
TRACE_MARKS = ("Traceback (most recent call last)", 'File "/', "sqlalchemy.exc", "asyncpg.")


def all_providers(**overrides: Any) -> dict[str, Any]:
    """Settings with all four providers and the admin API configured, limits out of the way."""
    values: dict[str, Any] = {
        "meta_app_secret": META_APP_SECRET,
        "meta_verify_token": META_VERIFY_TOKEN,
        "stripe_webhook_secret": STRIPE_SECRET,
        "razorpay_webhook_secret": RAZORPAY_SECRET,
        "rate_limit_per_ip": "1000000/minute",
        "rate_limit_per_sender": "1000000/minute",
    }
    values.update(overrides)
    return values


def server_secrets_env(**extra: str) -> dict[str, str]:
    """The same as environment variables for ``running_server`` (Twilio and admin are there)."""
    env = {
        "WHATSORDER_META_APP_SECRET": META_APP_SECRET,
        "WHATSORDER_META_VERIFY_TOKEN": META_VERIFY_TOKEN,
        "WHATSORDER_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "WHATSORDER_RAZORPAY_WEBHOOK_SECRET": RAZORPAY_SECRET,
    }
    env.update(extra)
    return env


def sqlite_copy(template: Path, directory: Path) -> str:
    """A database of its own, copied from the migrated and seeded template."""
    path = directory / "whatsorder.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def database_for(
    request: pytest.FixtureRequest, backend: str, *, seeded: bool = True
) -> Iterator[str]:
    """A database of its own for a module-scoped fixture: migrated and seeded, or empty."""
    directory = request.getfixturevalue("tmp_path_factory").mktemp("hostile")
    if backend == "sqlite" and seeded:
        yield sqlite_copy(request.getfixturevalue("sqlite_template"), directory)
    elif backend == "sqlite":
        yield f"sqlite:///{directory / 'store.db'}"
    else:
        yield from fresh_postgres_database(request.getfixturevalue("postgres_template"))


# ---------------------------------------------------------------------------------------------
# Signing as the providers sign


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key.lower() == name), None)


def provider_signatures(path: str, query: str, body: bytes) -> dict[bytes, bytes]:
    """The signature headers the provider of ``path`` would send with ``body``."""
    if path in TWILIO_PATHS:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        params = twilio.FormParams.of(parse_qsl(text, keep_blank_values=True))
        url = PUBLIC_URL + path + (f"?{query}" if query else "")
        return {b"x-twilio-signature": twilio.sign(TWILIO_TOKEN, url, params).encode()}
    if path == META_PATH:
        return {b"x-hub-signature-256": meta_signature(body).encode()}
    if path == STRIPE_PATH:
        moment = int(time.time())
        return {b"stripe-signature": f"t={moment},v1={stripe_v1(body, moment)}".encode()}
    if path == RAZORPAY_PATH:
        return {b"x-razorpay-signature": razorpay_signature(body).encode()}
    return {}


class Signing:
    """ASGI wrapper: each webhook request signed by its provider over the bytes the app gets.

    So fuzzed bodies pass the signature check and reach parsing, the engine and the handlers,
    as they would if a provider (or a stolen secret) sent them.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in (WEBHOOK_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        signed = provider_signatures(scope["path"], query, body)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in signed]
        headers.extend(signed.items())
        if scope["path"] == RAZORPAY_PATH and _header(headers, b"x-razorpay-event-id") is None:
            headers.append((b"x-razorpay-event-id", b"evt_fuzz"))
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, replay, send)


# ---------------------------------------------------------------------------------------------
# What a user checks of an answer


def leaks(text: str, secrets: tuple[str, ...] = SECRETS_WITH_ADMIN) -> list[str]:
    """Which secrets or stack-trace marks ``text`` shows."""
    return [secret for secret in (*secrets, *TRACE_MARKS) if secret in text]


def answer_faults(response: httpx.Response) -> list[str]:
    """What is wrong with ``response`` as an answer to a hostile request (empty: nothing).

    Never a 5xx other than a documented 503, never a stack trace or a secret; every refusal a
    problem+json naming its kind, status, title and detail.
    """
    faults: list[str] = []
    status = response.status_code
    shown = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    faults += [f"response shows {leak!r}" for leak in leaks(shown)]
    if status >= 500 and status != 503:
        faults.append(f"server error {status}: {response.text[:300]}")
    if status >= 400:
        content_type = response.headers.get("content-type", "")
        if content_type != PROBLEM:
            faults.append(f"{status} answered as {content_type!r}, not problem+json")
        else:
            try:
                problem = response.json()
            except ValueError:
                problem = None
            if not isinstance(problem, dict) or problem.get("status") != status:
                faults.append(f"{status} problem document malformed: {response.text[:200]}")
            elif not all(problem.get(field) for field in ("type", "title", "detail")):
                faults.append(f"{status} problem lacks type, title or detail: {problem}")
    return faults


def assert_clean_answer(response: httpx.Response) -> None:
    faults = answer_faults(response)
    assert not faults, (response.request.method, response.request.url.path, faults)


# ---------------------------------------------------------------------------------------------
# What a refused request must not have written


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows in every table of the schema (stock too: a refused order moves none)."""
    from whatsorder.db.tables import products

    counts: dict[str, int] = {}
    async with engine.connect() as connection:
        for table in metadata.sorted_tables:
            counts[table.name] = int(
                await connection.scalar(select(func.count()).select_from(table)) or 0
            )
        counts["stock"] = int(await connection.scalar(select(func.sum(products.c.stock))) or 0)
    return counts


@contextmanager
def event_loop() -> Iterator[asyncio.Runner]:
    """One event loop kept across Hypothesis examples (the app's pools live on it)."""
    with asyncio.Runner() as runner:
        yield runner
