"""Schemathesis over the service's own OpenAPI document: every route, with valid and invalid
input, unsigned and (webhooks) signed exactly as the provider signs, so fuzzed bodies reach the
parsers, the idempotency engine and the handlers.

Every answer must be no 5xx (503 aside, which is documented), no stack trace and no secret,
every refusal a problem+json with its kind; and schemathesis checks the status codes and
content types against the document, so /docs stays truthful. Unsigned requests store nothing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import make_settings
from faults.hostile_support import (
    WEBHOOK_PATHS,
    Signing,
    all_providers,
    answer_faults,
    database_for,
    event_loop,
    row_counts,
)
from faults.modes import FULL, report, scaled
from support import META_PATH
from whatsorder.db.engine import open_database
from whatsorder.web.app import create_app

# Every operation of the document; test_every_route_is_fuzzed keeps this list whole.
OPERATIONS = [
    ("POST", "/api/v1/whatsapp/webhook"),
    ("POST", "/api/v1/whatsapp/status"),
    ("GET", "/api/v1/whatsapp/meta/webhook"),
    ("POST", "/api/v1/whatsapp/meta/webhook"),
    ("POST", "/api/v1/payments/stripe/webhook"),
    ("POST", "/api/v1/payments/razorpay/webhook"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/v1/whatsapp/test"),
    ("GET", "/api/v1/admin/idempotency/stats"),
    ("GET", "/api/v1/admin/dead-letters"),
    ("GET", "/api/v1/admin/orders"),
    ("GET", "/metrics"),
]
# Operations that take no input at all: nothing to make invalid.
NO_INPUT = {"/healthz", "/readyz", "/api/v1/whatsapp/test", "/metrics"}
EXAMPLES = scaled(10, 200)
# Meta's nested delivery schema is slow to generate: fewer in the quick mode.
META_EXAMPLES = scaled(4, 200)  # per operation, generation mode and signing
BASE_URL = "http://testserver"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]

sent: Counter[str] = Counter()  # requests sent, by operation, mode and signing: for the report


class Fuzzed:
    """The app (all providers configured) on a database of its own, kept for the module."""

    def __init__(self, runner: asyncio.Runner, database_url: str) -> None:
        self.runner = runner
        self.app = create_app(make_settings(database_url, require_https=False, **all_providers()))
        self.schema = schemathesis.openapi.from_dict(self.app.openapi())
        self.db: AsyncEngine = open_database(database_url)
        self.clients = {
            signed: httpx.AsyncClient(
                transport=httpx.ASGITransport(
                    app=Signing(self.app) if signed else self.app,
                    client=("127.0.0.1", 4321),
                    raise_app_exceptions=False,
                ),
                base_url=BASE_URL,
            )
            for signed in (False, True)
        }

    def send(self, prepared: requests.PreparedRequest, *, signed: bool) -> httpx.Response:
        body = prepared.body
        content = body.encode() if isinstance(body, str) else (body or b"")
        headers = [
            (name.encode("latin-1"), (v if isinstance(v, bytes) else v.encode("latin-1")))
            for name, v in prepared.headers.items()
        ]
        assert prepared.method is not None
        assert prepared.url is not None
        request = self.clients[signed].build_request(
            prepared.method, prepared.url, content=content, headers=headers
        )
        return self.runner.run(self.clients[signed].send(request))

    def counts(self) -> dict[str, int]:
        return self.runner.run(row_counts(self.db))

    def close(self) -> None:
        for client in self.clients.values():
            self.runner.run(client.aclose())
        self.runner.run(self.db.dispose())
        self.runner.run(self.app.state.runtime.close())


# PostgreSQL refuses what SQLite stores (NUL, over-long values): the quick mode fuzzes there.
BACKENDS = [
    *(["sqlite"] if FULL else []),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=BACKENDS)
def fuzzed(request: pytest.FixtureRequest) -> Iterator[Fuzzed]:
    for database_url in database_for(request, request.param):
        with event_loop() as runner:
            target = Fuzzed(runner, database_url)
            yield target
            target.close()
    lines = [f"schemathesis ({request.param}): {sum(sent.values())} requests"]
    lines += [f"  {count:5d}  {label}" for label, count in sorted(sent.items())]
    report("\n".join(lines))
    sent.clear()


def prepared(kwargs: dict[str, Any]) -> requests.PreparedRequest:
    """The request exactly as a requests-based client would send it (schemathesis' own way)."""
    kwargs.pop("cookies", None)
    try:
        return requests.Request(**kwargs).prepare()
    except (ValueError, TypeError, requests.RequestException, UnicodeError):
        reject()  # input no HTTP client can send (e.g. a header with a newline)


def cases() -> list[Any]:
    params = []
    for method, path in OPERATIONS:
        for mode in (GenerationMode.POSITIVE,) if path in NO_INPUT else GenerationMode:
            for signed in (False, True) if method == "POST" and path in WEBHOOK_PATHS else (False,):
                label = f"{method} {path} {mode.value}" + (" signed" if signed else "")
                params.append(pytest.param(method, path, mode, signed, id=label))
    return params


def test_every_route_is_fuzzed(fuzzed: Fuzzed) -> None:
    documented = {
        (method.upper(), path)
        for path, operations in fuzzed.app.openapi()["paths"].items()
        for method in operations
    }
    assert documented == set(OPERATIONS)
    for path in NO_INPUT:
        assert "parameters" not in fuzzed.app.openapi()["paths"][path]["get"]


@pytest.mark.parametrize(("method", "path", "mode", "signed"), cases())
def test_fuzzed_requests_get_clean_answers(
    fuzzed: Fuzzed, method: str, path: str, mode: GenerationMode, signed: bool
) -> None:
    operation = fuzzed.schema[path][method]
    label = f"{method} {path} {mode.value}" + (" signed" if signed else "")
    before = fuzzed.counts()

    @settings(
        max_examples=META_EXAMPLES if (method, path) == ("POST", META_PATH) else EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        request = prepared(case.as_transport_kwargs(base_url=BASE_URL))
        response = fuzzed.send(request, signed=signed)
        sent[label] += 1
        faults = answer_faults(response)
        assert not faults, (request.method, request.url, request.headers, request.body, faults)
        case.validate_response(response, checks=CHECKS)

    fuzz()
    assert sent[label] > 0
    if not signed:  # nobody without a secret can leave anything behind
        after = fuzzed.counts()
        assert after == before
