"""Only requests Twilio signed for our public URL get in; refused ones leave no trace."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
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
from whatsorder.providers import twilio
from whatsorder.providers.twilio import FormParams, sign, signature_is_valid

# Twilio's own vectors, from twilio-python's tests/unit/test_request_validator.py.
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PAIRS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
]
VECTOR_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
VECTOR_SIGNATURE_WITH_PORT_443 = "kvajT1Ptam85bY51eRf/AJRuM3w="
VECTOR_DUPLICATES = [
    ("Sid", "CA123"),
    ("SidAccount", "AC123"),
    ("Digits", "5678"),
    ("Digits", "1234"),
]
VECTOR_DUPLICATES_SIGNATURE = "IK+Dwps556ElfBT0I3Rgjkr1wJU="

ROUTES = [
    pytest.param(INBOUND_PATH, lambda: inbound_form("MENU"), id="inbound"),
    pytest.param(STATUS_PATH, lambda: status_form(new_sid(), "delivered"), id="status"),
]
Form = Callable[[], list[tuple[str, str]]]


def vector_params(**changes: str) -> FormParams:
    return FormParams.of((name, changes.get(name, value)) for name, value in VECTOR_PAIRS)


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        pytest.param(VECTOR_URL, VECTOR_SIGNATURE, id="as-signed"),
        pytest.param(
            VECTOR_URL.replace(".com", ".com:443"), VECTOR_SIGNATURE, id="our-url-with-443"
        ),
        pytest.param(VECTOR_URL, VECTOR_SIGNATURE_WITH_PORT_443, id="signed-with-443"),
        pytest.param(VECTOR_URL.replace(".com", ".com:1234"), VECTOR_SIGNATURE, id="other-port"),
    ],
)
def test_twilios_own_test_vectors_are_accepted(url: str, signature: str) -> None:
    assert signature_is_valid(VECTOR_TOKEN, url, vector_params(), signature)


def test_sign_computes_twilios_own_signature() -> None:
    assert sign(VECTOR_TOKEN, VECTOR_URL, vector_params()) == VECTOR_SIGNATURE


def test_repeated_form_fields_are_all_signed_as_twilio_does() -> None:
    params = FormParams.of(VECTOR_DUPLICATES)
    assert sign(VECTOR_TOKEN, VECTOR_URL, params) == VECTOR_DUPLICATES_SIGNATURE
    assert signature_is_valid(VECTOR_TOKEN, VECTOR_URL, params, VECTOR_DUPLICATES_SIGNATURE)
    one_dropped = FormParams.of(VECTOR_DUPLICATES[:-1])
    assert not signature_is_valid(
        VECTOR_TOKEN, VECTOR_URL, one_dropped, VECTOR_DUPLICATES_SIGNATURE
    )


@pytest.mark.parametrize(
    ("token", "url", "params", "signature"),
    [
        pytest.param(
            VECTOR_TOKEN, VECTOR_URL, vector_params(Digits="1235"), VECTOR_SIGNATURE, id="param"
        ),
        pytest.param(
            VECTOR_TOKEN,
            VECTOR_URL.replace("foo=1", "foo=2"),
            vector_params(),
            VECTOR_SIGNATURE,
            id="url",
        ),
        pytest.param(
            VECTOR_TOKEN, VECTOR_URL, vector_params(), VECTOR_SIGNATURE[:-2] + "9=", id="signature"
        ),
        pytest.param("12346", VECTOR_URL, vector_params(), VECTOR_SIGNATURE, id="token"),
        pytest.param(VECTOR_TOKEN, VECTOR_URL, vector_params(), "", id="empty-signature"),
    ],
)
def test_a_one_character_change_breaks_the_signature(
    token: str, url: str, params: FormParams, signature: str
) -> None:
    assert not signature_is_valid(token, url, params, signature)


async def test_a_request_twilio_signed_for_the_public_url_is_accepted(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    response = await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )
    assert response.status_code == 200
    assert "Order ORD-" in reply_text(response)
    assert TWILIO_TOKEN not in response.text
    assert (await snapshot(db)).orders == 1


@pytest.mark.parametrize(("path", "form"), ROUTES)
async def test_a_wrong_signature_gets_403_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncEngine, path: str, form: Form
) -> None:
    before = await snapshot(db)
    pairs = form()
    forged = signed_headers(path, pairs, token="not-" + TWILIO_TOKEN)
    response = await client.post(path, content=encode(pairs), headers=forged)
    assert_problem(response, 403, "signature-invalid")
    assert await snapshot(db) == before


@pytest.mark.parametrize(("path", "form"), ROUTES)
async def test_a_missing_signature_gets_401_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncEngine, path: str, form: Form
) -> None:
    before = await snapshot(db)
    pairs = form()
    headers = signed_headers(path, pairs)
    del headers["X-Twilio-Signature"]
    response = await client.post(path, content=encode(pairs), headers=headers)
    assert_problem(response, 401, "signature-missing")
    assert await snapshot(db) == before


@pytest.mark.parametrize("unset", [None, ""])
@pytest.mark.parametrize(("path", "form"), ROUTES)
async def test_without_an_auth_token_the_route_is_not_configured_and_accepts_nothing(
    app_factory: Callable[..., FastAPI], db: AsyncEngine, path: str, form: Form, unset: str | None
) -> None:
    before = await snapshot(db)
    pairs = form()
    unsigned = signed_headers(path, pairs)
    del unsigned["X-Twilio-Signature"]
    attempts = [signed_headers(path, pairs), signed_headers(path, pairs, token="x"), unsigned]
    async with app_client(app_factory(twilio_auth_token=unset)) as client:
        for headers in attempts:
            response = await client.post(path, content=encode(pairs), headers=headers)
            assert_problem(response, 503, "provider-not-configured")
            assert "not configured" in response.json()["title"]
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    "signed_url",
    [
        PUBLIC_URL.replace("https://", "http://"),  # what the app sees behind a TLS proxy
        "https://testserver",  # the app's own scheme and host
        "http://testserver",
        PUBLIC_URL + "/",  # one character more
    ],
)
async def test_a_signature_made_for_another_url_gets_403(
    client: httpx.AsyncClient, db: AsyncEngine, signed_url: str
) -> None:
    before = await snapshot(db)
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    headers = signed_headers(INBOUND_PATH, pairs, public_url=signed_url)
    response = await client.post(INBOUND_PATH, content=encode(pairs), headers=headers)
    assert_problem(response, 403, "signature-invalid")
    assert await snapshot(db) == before


async def test_a_blank_body_value_is_signed_and_dropping_it_breaks_the_signature(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("")
    assert ("Body", "") in pairs
    headers = signed_headers(INBOUND_PATH, pairs)
    assert b"Body=&" in encode(pairs)

    without_body = [pair for pair in pairs if pair[0] != "Body"]
    dropped = await client.post(INBOUND_PATH, content=encode(without_body), headers=headers)
    assert_problem(dropped, 403, "signature-invalid")
    assert (await snapshot(db)).idempotency_records == 0

    accepted = await client.post(INBOUND_PATH, content=encode(pairs), headers=headers)
    assert accepted.status_code == 200
    assert reply_text(accepted)  # the help text: a blank message is still answered
    assert (await snapshot(db)).idempotency_records == 1


async def test_a_tampered_field_under_a_genuine_signature_gets_403(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    pairs = inbound_form("ORDER 1 x RICE-5KG")
    headers = signed_headers(INBOUND_PATH, pairs)
    tampered = [(name, "ORDER 9 x RICE-5KG" if name == "Body" else v) for name, v in pairs]
    response = await client.post(INBOUND_PATH, content=encode(tampered), headers=headers)
    assert_problem(response, 403, "signature-invalid")
    assert (await snapshot(db)).orders == 0


async def test_a_webhook_url_with_a_query_string_is_checked_as_twilio_signed_it(
    client: httpx.AsyncClient,
) -> None:
    pairs = inbound_form("MENU")
    path = INBOUND_PATH + "?store=north"
    with_query = signed_headers(path, pairs)
    without_query = signed_headers(INBOUND_PATH, pairs)

    accepted = await client.post(path, content=encode(pairs), headers=with_query)
    refused = await client.post(path, content=encode(pairs), headers=without_query)

    assert accepted.status_code == 200
    assert_problem(refused, 403, "signature-invalid")


def test_a_reply_longer_than_whatsapp_allows_goes_out_as_several_messages() -> None:
    import xml.etree.ElementTree as ET

    long_reply = "\n".join(f"{n:04d} x SKU-{n} " + "-" * 40 for n in range(80))
    root = ET.fromstring(twilio.twiml(long_reply + "\x00\x1b"))  # noqa: S314 (our own TwiML)
    parts = [message.text or "" for message in root.iter("Message")]
    assert len(parts) > 1
    assert all(len(part) <= twilio.MAX_MESSAGE_CHARS for part in parts)
    assert "\n".join(parts) == long_reply  # cut between lines, nothing lost, no control chars
