"""Hostile Idempotency-Key headers, on the service and on the library middleware (every store):
SQL and Redis metacharacters, control characters, 256+ characters, unicode lookalikes.

Two properties with their own oracles: any 1-255 visible-ASCII key without structured-field
structure (no '"', ',', ';', '(' or ')', and no Boolean, Byte Sequence or Date) is taken
literally (stored byte for byte, replayed for the same request, never confused with another
key); any key with a character outside visible ASCII, or too long, or empty, or structured,
is a 400 naming the rule, and nothing is stored or run."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from conftest import make_settings
from faults.hostile_support import (
    all_providers,
    answer_faults,
    database_for,
    event_loop,
)
from faults.modes import scaled
from support import INBOUND_PATH, encode, inbound_form, signed_headers
from whatsorder.db.tables import webhook_idempotency
from whatsorder.web.app import create_app
from whatsorder_idempotency import IdempotencyMiddleware, open_store, sql_engine
from whatsorder_idempotency.stores.redis import RedisStore

EXAMPLES = scaled(15, 400)
RULES = {
    "empty",
    "too-long",
    "not-visible-ascii",
    "malformed-structured-field",
    "not-an-item",
    "parameters-not-allowed",
    "wrong-item-type",
}
STRUCTURE = '",;()'  # what makes a bare value a list, parameters or a broken string


def unstructured(key: str) -> bool:
    """No list, parameters or string, and no Boolean (?1), Byte Sequence (:aGk=:) or Date (@1)."""
    return not any(char in key for char in STRUCTURE) and key[0] not in "?:@"


# What breaks naive SQL, Redis (glob, protocol), JSON, shells and logs.
METACHARACTERS = [*"'\";%_\\*?[]{}:$`|&<>#!/-=", "--", "/*", "*/", "\\x00", "\\r\\n"]
visible = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
unstructured_visible = st.characters(
    min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=STRUCTURE
)
metachar_text = st.lists(
    st.one_of(
        unstructured_visible,
        st.sampled_from([meta for meta in METACHARACTERS if meta not in STRUCTURE]),
    ),
    min_size=1,
)
valid_keys = st.one_of(
    metachar_text.map("".join),
    st.sampled_from(
        [
            "'--DROP-TABLE-webhook_idempotency--",
            "x'OR'1'='1",
            "*",
            "FLUSHALL",
            "KEYS*",
            "idem:1:twilio_inbound:other",
            "a" * 255,
        ]
    ),
).filter(lambda key: 1 <= len(key) <= 255 and unstructured(key))

# Control characters, DEL, spaces, Latin-1 and lookalikes of ASCII letters (Cyrillic а, е, о;
# fullwidth Ａ; dotless ı; the ﬁ ligature; zero-width space; right-to-left override).
BAD = list("\x00\x01\x07\x08\x0b\x0c\x1b\x7f \u00a0\u00e9\u0430\u0435\u043e\uff21\u0131\ufb01")
BAD += ["\u200b", "\u202e", "\U0001f600"]
invalid_keys = st.one_of(
    st.tuples(
        st.text(visible, min_size=1, max_size=20).filter(lambda key: not key.startswith('"')),
        st.sampled_from(BAD),
        st.text(visible, min_size=1, max_size=20),
    ).map("".join),
    st.text(visible, min_size=256, max_size=600).filter(lambda key: not key.startswith('"')),
    st.sampled_from(
        [
            *["", "  ", "\t", '""', '"unclosed', '"a\\nb"', '"a";x=1'],
            *["';DROP-TABLE-webhook_idempotency;--", "a,b", "(a)", "?1", ":aGk=:", "@1"],
        ]
    ),
)


def header_bytes(key: str) -> bytes:
    """The key as a client puts it on the wire: UTF-8 (servers read headers as Latin-1)."""
    return key.encode("utf-8", errors="surrogatepass")


class Target:
    """Where keys are sent: whatsorder's Twilio route, or the middleware in front of an app."""

    def __init__(self, runner: asyncio.Runner, kind: str, url: str) -> None:
        self.runner = runner
        self.kind = kind
        self.calls = 0
        if kind == "service":
            self.app: Any = create_app(make_settings(url, **all_providers()))
            self.db = sql_engine(url)
            self.store: Any = None
        else:
            inner = FastAPI()

            @inner.post("/orders", status_code=201)
            async def create(order: dict[str, object]) -> dict[str, object]:
                self.calls += 1
                return {"id": self.calls, **order}

            if url.startswith("redis"):
                prefix = f"hostile-{secrets.token_hex(4)}:"
                self.store = RedisStore.from_url(url, prefix=prefix)
            else:
                self.store = open_store(url)
            self.app = IdempotencyMiddleware(inner, store=self.store)
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 4321))
        self.client = httpx.AsyncClient(transport=transport, base_url="https://testserver")

    def post(self, key: bytes | None, tag: str) -> httpx.Response:
        headers = [] if key is None else [(b"idempotency-key", key)]
        if self.kind == "service":
            pairs = inbound_form("MENU", sid=tag)
            request = self.client.build_request(
                "POST",
                INBOUND_PATH,
                content=encode(pairs),
                headers=[*signed_headers(INBOUND_PATH, pairs).items(), *headers],
            )
        else:
            request = self.client.build_request(
                "POST", "/orders", json={"tag": tag}, headers=headers
            )
        return self.runner.run(self.client.send(request))

    def stored(self, key: str) -> bool:
        """Whether a record exists under exactly this key."""
        if self.kind == "service":

            async def find() -> bool:
                async with self.db.connect() as connection:
                    rows = await connection.execute(
                        select(webhook_idempotency.c.idempotency_key).where(
                            webhook_idempotency.c.idempotency_key == key
                        )
                    )
                    return [row[0] for row in rows] == [key]

            return self.runner.run(find())
        return self.runner.run(self.store.get("POST /orders", key)) is not None

    def records(self) -> int:
        """How many keys the service holds (the middleware's app counts its runs instead)."""
        if self.kind != "service":
            return 0

        async def count() -> int:
            async with self.db.connect() as connection:
                found = await connection.scalar(
                    select(func.count()).select_from(webhook_idempotency)
                )
                return int(found or 0)

        return self.runner.run(count())

    def close(self) -> None:
        self.runner.run(self.client.aclose())
        if self.kind == "service":
            self.runner.run(self.db.dispose())
            self.runner.run(self.app.state.runtime.close())
        elif hasattr(self.store, "aclose"):
            self.runner.run(self.store.aclose())


TARGETS = [
    pytest.param(("service", "sqlite"), id="service-sqlite"),
    pytest.param(("service", "postgres"), id="service-postgres", marks=pytest.mark.postgres),
    pytest.param(("middleware", "sqlite"), id="middleware-sqlite"),
    pytest.param(("middleware", "postgres"), id="middleware-postgres", marks=pytest.mark.postgres),
    pytest.param(("middleware", "redis"), id="middleware-redis"),
    pytest.param(("middleware", "memory"), id="middleware-memory"),
]


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    kind, backend = request.param
    if backend == "redis":
        urls: Iterator[str] = iter([request.getfixturevalue("redis_url")])
    elif backend == "memory":
        urls = iter(["memory://"])
    else:
        urls = database_for(request, backend, seeded=kind == "service")
    for url in urls:
        with event_loop() as runner:
            made = Target(runner, kind, url)
            yield made
            made.close()


SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def test_any_visible_ascii_key_is_taken_literally_and_replayed_only_to_its_own_request(
    target: Target,
) -> None:
    # The model: which request each key was first used with. A key is replayed to that
    # request only; with any other it is a 422; a key never used runs the request.
    used: dict[str, str] = {}

    def check(key: str, tag: str) -> None:
        response = target.post(header_bytes(key), tag)
        assert not answer_faults(response), response.text
        first = used.setdefault(key, tag)
        if first != tag:
            assert response.status_code == 422, (key, response.text)
            assert response.json()["type"].endswith(":key-reused")
            return
        assert response.status_code in (200, 201), (key, response.text)
        replayed = response.headers.get("idempotent-replayed") == "true"
        assert replayed == (key in answered), key
        assert answered.setdefault(key, response.content) == response.content
        assert target.stored(key)

    answered: dict[str, bytes] = {}

    @SETTINGS
    @given(key=valid_keys, request=st.sampled_from(["A", "B", "C"]))
    def run(key: str, request: str) -> None:
        tag = "SM" + hashlib.sha256((key + request).encode()).hexdigest()[:32]
        check(key, tag)
        check(key, tag)
        check(key[:-1] + ("b" if key[-1] != "b" else "c"), tag)  # a near key is another key

    run()


def test_a_key_with_control_lookalike_or_too_many_characters_gets_400_and_runs_nothing(
    target: Target,
) -> None:
    @SETTINGS
    @given(key=invalid_keys)
    def run(key: str) -> None:
        calls, records = target.calls, target.records()
        response = target.post(header_bytes(key), "SM" + secrets.token_hex(16))
        assert not answer_faults(response), response.text
        assert response.status_code == 400, (key, response.text)
        problem = response.json()
        assert problem["type"].endswith(":invalid-key")
        assert problem["rule"] in RULES
        assert response.text.isascii()  # the offending characters are never echoed
        assert target.calls == calls
        assert target.records() == records

    run()
