"""Auth tokens, app secrets, signatures and full phone numbers never leave the service.

A real ``whatsorder serve`` with every provider configured (known secrets, request bodies
stored) takes a varied workload: orders, statuses, payments, Meta deliveries and handshakes,
forged and refused requests, admin calls with right and wrong tokens, a reply that cannot be
sent. Then everything an operator or an attacker could read is searched: the captured logs,
every column of every table, ``/metrics``, and every response's headers and body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from faults.hostile_support import SECRETS_WITH_ADMIN, database_for, server_secrets_env
from faults.modes import FULL
from support import (
    ADMIN_TOKEN,
    INBOUND_PATH,
    META_PATH,
    META_VERIFY_TOKEN,
    RAZORPAY_PATH,
    STATUS_PATH,
    STRIPE_PATH,
    encode,
    free_port,
    inbound_form,
    meta_delivery,
    meta_headers,
    meta_status,
    meta_text_message,
    new_razorpay_event_id,
    new_sid,
    razorpay_event,
    razorpay_headers,
    running_server,
    signed_headers,
    status_form,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder.db.engine import open_database
from whatsorder.db.tables import dead_letters, metadata, webhook_idempotency

META_ACCESS_TOKEN = "test-meta-access-token-EAAG"
SECRETS = (*SECRETS_WITH_ADMIN, META_ACCESS_TOKEN)
# Two customers' numbers, each in the spellings providers use (E.164, WhatsApp id, Twilio).
NUMBERS = ("919876543210", "919812345678")


def phone_spellings(number: str) -> tuple[str, ...]:
    return (number, f"+{number}", f"whatsapp:+{number}")


class Workload:
    """Requests sent to the server, what they carried and what came back."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=20)
        self.signatures: set[str] = set()
        self.responses: list[httpx.Response] = []

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        for name in ("X-Twilio-Signature", "X-Hub-Signature-256", "X-Razorpay-Signature"):
            if headers.get(name):
                self.signatures.add(headers[name])
        if headers.get("Stripe-Signature"):
            self.signatures.update(
                part.split("=", 1)[1]
                for part in headers["Stripe-Signature"].split(",")
                if part.startswith("v1=")
            )
        return self.keep(self.client.post(path, content=body, headers=headers))

    def keep(self, response: httpx.Response) -> httpx.Response:
        self.responses.append(response)
        return response

    def twilio(self, path: str, pairs: list[tuple[str, str]], **extra: str) -> httpx.Response:
        return self.post(path, encode(pairs), signed_headers(path, pairs) | extra)


def run_workload(load: Workload) -> None:
    asha, ravi = (f"whatsapp:+{number}" for number in NUMBERS)
    order = inbound_form("ORDER 2 x RICE-5KG", sender=asha)
    assert load.twilio(INBOUND_PATH, order).status_code == 200
    load.twilio(INBOUND_PATH, order)  # a replay
    for text in ("MENU", "STATUS", "ORDER 1 x NOPE-1KG", "CANCEL ORD-000001", "HELP"):
        load.twilio(INBOUND_PATH, inbound_form(text, sender=ravi))
    load.twilio(
        INBOUND_PATH, inbound_form("ORDER 1 x TOOR-1KG", sender=asha), **{"Idempotency-Key": "k-1"}
    )
    sid = new_sid()
    load.twilio(STATUS_PATH, status_form(sid, "delivered"))
    # Refused: a forged signature, a wrong token's signature, a malformed form, a bad key.
    forged = inbound_form("ORDER 9 x RICE-5KG", sender=ravi)
    load.post(INBOUND_PATH, encode(forged), signed_headers(INBOUND_PATH, forged, token="wrong"))
    missing = [pair for pair in inbound_form("MENU", sender=ravi) if pair[0] != "MessageSid"]
    load.twilio(INBOUND_PATH, missing)
    load.twilio(INBOUND_PATH, inbound_form("MENU", sender=ravi), **{"Idempotency-Key": "a b"})

    # Meta: an order, a status, a malformed delivery (dead letter), a forged one, handshakes.
    message = meta_text_message("ORDER 1 x OIL-1L", sender=NUMBERS[1])
    delivery = meta_delivery([message], [meta_status("wamid.out1", "delivered", NUMBERS[0])])
    assert load.post(META_PATH, delivery, meta_headers(delivery)).status_code == 200
    broken = json.dumps({"object": "whatsapp_business_account", "entry": [{"from": NUMBERS[0]}]})
    load.post(META_PATH, broken.encode(), meta_headers(broken.encode()))
    load.post(META_PATH, delivery, meta_headers(delivery, "not-the-secret"))
    challenge = {"hub.mode": "subscribe", "hub.challenge": "1158201444"}
    load.keep(
        load.client.get(META_PATH, params={**challenge, "hub.verify_token": META_VERIFY_TOKEN})
    )
    load.keep(load.client.get(META_PATH, params={**challenge, "hub.verify_token": "guess"}))

    # Payments: paid by Stripe, a Razorpay event for no order, a stale Stripe signature.
    paid = stripe_body(stripe_event("ORD-000001", 13000))
    assert load.post(STRIPE_PATH, paid, stripe_headers(paid)).status_code == 200
    stale = stripe_body(stripe_event("ORD-000001", 13000))
    load.post(STRIPE_PATH, stale, stripe_headers(stale, timestamp=int(time.time()) - 3600))
    captured = razorpay_event(None, 500)
    load.post(RAZORPAY_PATH, captured, razorpay_headers(captured, new_razorpay_event_id()))
    load.post(RAZORPAY_PATH, captured, razorpay_headers(captured, "evt_x", secret="wrong"))

    # Operators: right and wrong admin tokens, the settings page, metrics.
    for token in (ADMIN_TOKEN, "guessed-admin-token"):
        auth = {"Authorization": f"Bearer {token}"}
        for path in (
            "/api/v1/admin/orders",
            "/api/v1/admin/idempotency/stats",
            "/api/v1/admin/dead-letters",
        ):
            load.keep(load.client.get(path, headers=auth))
    load.keep(load.client.get("/api/v1/whatsapp/test"))
    load.keep(load.client.get("/metrics"))


def table_dump(database_url: str) -> dict[str, str]:
    """Every column of every row of every table, as text, by table."""

    async def dump() -> dict[str, str]:
        engine = open_database(database_url)
        try:
            async with engine.connect() as connection:
                return {
                    table.name: "\n".join(
                        repr(tuple(row)) for row in await connection.execute(select(table))
                    )
                    for table in metadata.sorted_tables
                }
        finally:
            await engine.dispose()

    return asyncio.run(dump())


def stored_bodies(database_url: str) -> str:
    """The request bodies and dead letters the service kept (personal data must be masked)."""

    async def read() -> str:
        engine = open_database(database_url)
        try:
            async with engine.connect() as connection:
                bodies = await connection.execute(select(webhook_idempotency.c.request_body))
                letters = await connection.execute(select(dead_letters.c.body))
                return "\n".join(str(row[0]) for row in [*bodies, *letters])
        finally:
            await engine.dispose()

    return asyncio.run(read())


def found(text: str, needles: tuple[str, ...] | set[str]) -> list[str]:
    return sorted(needle for needle in needles if needle in text)


@pytest.fixture(params=["sqlite", *(["postgres"] if FULL else [])])
def served_database(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from database_for(request, request.param)


@pytest.mark.slow
def test_no_secret_signature_or_full_phone_number_leaves_the_service(
    served_database: str, tmp_path: Path
) -> None:
    env = server_secrets_env(
        WHATSORDER_LOG_FORMAT="json",
        WHATSORDER_STORE_REQUEST_BODIES="true",
        WHATSORDER_META_ACCESS_TOKEN=META_ACCESS_TOKEN,
        WHATSORDER_META_PHONE_NUMBER_ID="109876543210987",
        # Nothing listens there: sending the reply fails, and that failure is logged.
        WHATSORDER_META_GRAPH_URL=f"http://127.0.0.1:{free_port()}/v21.0",
    )
    log_path = tmp_path / "server.log"
    with running_server(served_database, log_path, **env) as server:
        load = Workload(server.base_url)
        run_workload(load)
        time.sleep(3)  # the outbox sender tries (and fails) to send Meta's reply
        metrics = load.client.get("/metrics").text
        load.client.close()
    log = log_path.read_text(errors="replace")
    tables = table_dump(served_database)
    phones = {spelling for number in NUMBERS for spelling in phone_spellings(number)}
    never = {*SECRETS, *load.signatures}

    assert len(load.responses) >= 25
    assert len(load.signatures) >= 15
    assert "Order ORD-000001" in load.responses[0].text  # the workload did take effect
    assert "send" in log.lower() or "outbox" in log.lower()

    assert found(log, never) == [], "logs"
    assert found(log, phones) == [], "logs"
    assert found(metrics, never | phones) == [], "metrics"
    for name, text in tables.items():
        assert found(text, never) == [], name
    assert found(stored_bodies(served_database), phones) == [], "stored request bodies"
    for response in load.responses:
        shown = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        assert found(shown, never) == [], (response.request.url, response.status_code)
        if response.status_code >= 400:
            assert found(shown, phones) == [], (response.request.url, response.text)


@pytest.mark.parametrize("formatter", ["json", "text"])
def test_an_access_log_line_keeps_query_names_but_never_their_values(formatter: str) -> None:
    import logging

    from whatsorder import observability

    query = f"hub.mode=subscribe&hub.verify_token={META_VERIFY_TOKEN}&hub.challenge=42"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"{META_PATH}?{query}", "1.1", 200),
        None,
    )
    chosen = observability.JsonFormatter() if formatter == "json" else observability.TextFormatter()
    line = chosen.format(record)
    assert META_VERIFY_TOKEN not in line
    assert f"{META_PATH}?hub.mode=*&hub.verify_token=*&hub.challenge=*" in line
