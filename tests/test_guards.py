"""The cheap guards before any work: body size, HTTPS, rate limits, well-formed requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    INBOUND_PATH,
    PUBLIC_URL,
    STATUS_PATH,
    TWILIO_TOKEN,
    app_client,
    assert_problem,
    encode,
    inbound_form,
    new_sid,
    reply_text,
    signed_headers,
    snapshot,
    status_form,
)
from whatsorder.db.tables import webhook_idempotency
from whatsorder.ordering.replies import RATE_LIMITED
from whatsorder.providers import twilio

AppFactory = Callable[..., FastAPI]
LIMIT = 2048


async def post_signed(
    client: httpx.AsyncClient, pairs: list[tuple[str, str]], **headers: str
) -> httpx.Response:
    signed = signed_headers(INBOUND_PATH, pairs) | headers
    return await client.post(INBOUND_PATH, content=encode(pairs), headers=signed)


async def assert_nothing_stored(db: AsyncEngine) -> None:
    state = await snapshot(db)
    assert (state.idempotency_records, state.retailers, state.orders) == (0, 0, 0)


def form_of_size(size: int) -> list[tuple[str, str]]:
    """An inbound message whose encoded form is exactly ``size`` bytes long."""
    base = len(encode(inbound_form("")))
    return inbound_form("a" * (size - base))


async def test_a_body_at_the_limit_is_accepted_and_one_byte_more_gets_413_before_signatures(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    async with app_client(app_factory(max_body_bytes=LIMIT)) as client:
        over = form_of_size(LIMIT + 1)
        assert_problem(await post_signed(client, over), 413, "body-too-large")
        unsigned = await client.post(INBOUND_PATH, content=encode(over))
        assert_problem(unsigned, 413, "body-too-large")  # size is checked before the signature
        await assert_nothing_stored(db)
        assert (await post_signed(client, form_of_size(LIMIT))).status_code == 200


@pytest.mark.parametrize("declared", [None, "10"], ids=["no-length", "lying-length"])
async def test_a_streamed_body_over_the_limit_gets_413_whatever_length_it_declares(
    app_factory: AppFactory, db: AsyncEngine, declared: str | None
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"a" * 1024

    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"}
    if declared is not None:
        headers["Content-Length"] = declared
    async with app_client(app_factory(max_body_bytes=LIMIT)) as client:
        response = await client.post(INBOUND_PATH, content=chunks(), headers=headers)
    assert_problem(response, 413, "body-too-large")
    await assert_nothing_stored(db)


async def test_plain_http_gets_403_when_https_is_required(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    async with app_client(app_factory(), "http://testserver") as client:
        assert_problem(await post_signed(client, pairs), 403, "https-required")
    await assert_nothing_stored(db)
    # The same request is fine once HTTPS is not required: the signature names PUBLIC_URL.
    async with app_client(app_factory(require_https=False), "http://testserver") as client:
        assert (await post_signed(client, pairs)).status_code == 200


@pytest.mark.parametrize(
    ("trusted", "forwarded_proto", "status"),
    [
        pytest.param([], "https", 403, id="untrusted-peer"),
        pytest.param(["10.0.0.0/8"], "https", 403, id="peer-outside-trusted-network"),
        pytest.param(["127.0.0.1"], "https", 200, id="trusted-proxy"),
        pytest.param(["127.0.0.0/8"], "https", 200, id="trusted-network"),
        pytest.param(["127.0.0.1"], "http", 403, id="trusted-proxy-says-http"),
        # The nearest proxy's word is the last; an earlier one may be the client's own claim.
        pytest.param(["127.0.0.1"], "https, http", 403, id="client-claims-https"),
        pytest.param(["127.0.0.1"], "http, https", 200, id="nearest-proxy-says-https"),
    ],
)
async def test_x_forwarded_proto_counts_only_from_a_trusted_proxy(
    app_factory: AppFactory, trusted: list[str], forwarded_proto: str, status: int
) -> None:
    pairs = inbound_form("MENU")
    async with app_client(app_factory(trusted_proxies=trusted), "http://testserver") as client:
        response = await post_signed(client, pairs, **{"X-Forwarded-Proto": forwarded_proto})
    assert response.status_code == status, response.text
    if status == 403:
        assert_problem(response, 403, "https-required")


async def test_the_fourth_request_from_one_address_gets_429_before_any_signature_check(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    async with app_client(app_factory(rate_limit_per_ip="3/minute")) as client:
        for _ in range(3):  # unsigned requests count too: the limit comes before the crypto
            unsigned = await client.post(INBOUND_PATH, content=encode(inbound_form("MENU")))
            assert unsigned.status_code == 401
        limited = await post_signed(client, inbound_form("ORDER 1 x RICE-5KG"))
    assert_problem(limited, 429, "rate-limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    await assert_nothing_stored(db)


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "statuses"),
    [
        # From an untrusted peer, X-Forwarded-For is the client's own say: one peer, one limit.
        pytest.param([], ["192.0.2.1", "192.0.2.2"], [200, 429], id="forged"),
        pytest.param(
            ["127.0.0.1"],
            ["203.0.113.1", "203.0.113.2", "203.0.113.1"],
            [200, 200, 429],
            id="clients-behind-our-proxy",
        ),
        # Behind our proxy, a hop we cannot read ends the part of the chain we can believe.
        pytest.param(
            ["127.0.0.1"], ["198.51.100.1, junk", "198.51.100.2, junk"], [200, 429], id="junk-hop"
        ),
    ],
)
async def test_the_per_ip_limit_counts_the_address_our_proxies_vouch_for(
    app_factory: AppFactory, trusted: list[str], forwarded_for: list[str], statuses: list[int]
) -> None:
    seen = []
    async with app_client(app_factory(rate_limit_per_ip="1/minute", trusted_proxies=trusted)) as c:
        for hop in forwarded_for:
            seen.append(
                (await post_signed(c, inbound_form("MENU"), **{"X-Forwarded-For": hop})).status_code
            )
    assert seen == statuses


async def test_a_sender_over_the_limit_gets_a_polite_reply_and_no_order_replayed_on_retry(
    app_factory: AppFactory, db: AsyncEngine
) -> None:
    first, second, third = (inbound_form(f"ORDER {n} x RICE-5KG") for n in (1, 2, 3))
    async with app_client(app_factory(rate_limit_per_sender="2/minute")) as client:
        accepted = await post_signed(client, first)
        replay = await post_signed(client, first)
        assert "Order ORD-" in reply_text(await post_signed(client, second))  # replay not counted
        limited = await post_signed(client, third)
        retried = await post_signed(client, third)
        late_replay = await post_signed(client, first)
        other_sender = await post_signed(client, inbound_form("MENU", sender="whatsapp:+9199"))

    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == accepted.content
    assert limited.status_code == 200
    assert limited.headers["content-type"].startswith("text/xml")
    assert reply_text(limited) == RATE_LIMITED
    assert "idempotent-replayed" not in limited.headers
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.content == limited.content
    assert late_replay.headers["idempotent-replayed"] == "true"
    assert late_replay.content == accepted.content
    assert other_sender.status_code == 200
    assert reply_text(other_sender) != RATE_LIMITED
    state = await snapshot(db)
    assert (state.orders, state.idempotency_records) == (2, 4)


@pytest.mark.parametrize(
    ("path", "pairs", "missing"),
    [
        pytest.param(INBOUND_PATH, inbound_form("MENU"), "MessageSid", id="inbound-sid"),
        pytest.param(INBOUND_PATH, inbound_form("MENU"), "From", id="inbound-from"),
        pytest.param(STATUS_PATH, status_form(new_sid(), "sent"), "MessageSid", id="status-sid"),
        pytest.param(STATUS_PATH, status_form(new_sid(), "sent"), "MessageStatus", id="status"),
    ],
)
async def test_a_signed_request_without_a_required_field_gets_400_and_stores_nothing(
    client: httpx.AsyncClient,
    db: AsyncEngine,
    path: str,
    pairs: list[tuple[str, str]],
    missing: str,
) -> None:
    without = [pair for pair in pairs if pair[0] != missing]
    response = await client.post(
        path, content=encode(without), headers=signed_headers(path, without)
    )
    problem = assert_problem(response, 400, "malformed-webhook")
    assert missing in str(problem["detail"])
    await assert_nothing_stored(db)


async def test_a_json_body_gets_415_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    signature = twilio.sign(TWILIO_TOKEN, PUBLIC_URL + INBOUND_PATH, twilio.FormParams())
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    response = await client.post(INBOUND_PATH, content=b'{"Body": "MENU"}', headers=headers)
    assert_problem(response, 415, "unsupported-media-type")
    await assert_nothing_stored(db)


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        pytest.param("k" * 300, "too-long", id="300-characters"),
        pytest.param('"a\u0007b"', "not-visible-ascii", id="control-character"),
        pytest.param("a b", "not-visible-ascii", id="bare-token-with-space"),
        pytest.param('"unclosed', "malformed-structured-field", id="unclosed-string"),
        pytest.param('""', "empty", id="empty-string"),
        pytest.param("k-1;v=2", "parameters-not-allowed", id="parameters"),
        pytest.param("k-1, k-2", "not-an-item", id="list"),
        pytest.param("?1", "wrong-item-type", id="boolean"),
    ],
)
async def test_a_malformed_idempotency_key_gets_400_naming_the_rule(
    client: httpx.AsyncClient, db: AsyncEngine, key: str, rule: str
) -> None:
    response = await post_signed(
        client, inbound_form("ORDER 1 x RICE-5KG"), **{"Idempotency-Key": key}
    )
    problem = assert_problem(response, 400, "invalid-key")
    assert problem["rule"] == rule
    assert "\u0007" not in response.text
    await assert_nothing_stored(db)


@pytest.mark.parametrize(
    ("second", "rule"),
    [
        (("Idempotency-Key", "k-2"), "repeated-header"),
        (("X-Idempotency-Key", "k-2"), "conflicting-headers"),
    ],
)
async def test_two_idempotency_keys_naming_different_keys_get_400_naming_the_rule(
    client: httpx.AsyncClient, db: AsyncEngine, second: tuple[str, str], rule: str
) -> None:
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    headers = [*signed_headers(INBOUND_PATH, pairs).items(), ("Idempotency-Key", "k-1"), second]
    response = await client.post(INBOUND_PATH, content=encode(pairs), headers=headers)
    problem = assert_problem(response, 400, "invalid-key")
    assert problem["rule"] == rule
    await assert_nothing_stored(db)


async def test_an_idempotency_key_repeated_with_the_same_value_is_that_key(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("MENU")
    headers = [*signed_headers(INBOUND_PATH, pairs).items()]
    headers += [("Idempotency-Key", "8e03978e-40d5"), ("Idempotency-Key", '"8e03978e-40d5"')]
    first = await client.post(INBOUND_PATH, content=encode(pairs), headers=headers)
    again = await client.post(INBOUND_PATH, content=encode(pairs), headers=headers[:-1])
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    async with db.connect() as connection:
        keys = await connection.scalars(select(webhook_idempotency.c.idempotency_key))
        assert list(keys) == ["8e03978e-40d5"]


async def test_a_form_content_type_with_a_charset_is_accepted(client: httpx.AsyncClient) -> None:
    pairs = inbound_form("MENU")
    charset = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
    assert (await post_signed(client, pairs, **charset)).status_code == 200
