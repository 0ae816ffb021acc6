"""Test helpers: provider-signed requests, databases and a real server, as a user has them."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from whatsorder.providers import twilio

TWILIO_TOKEN = "test-twilio-auth-token"
ADMIN_TOKEN = "test-admin-token"
PUBLIC_URL = "https://orders.example.test"
INBOUND_PATH = "/api/v1/whatsapp/webhook"
STATUS_PATH = "/api/v1/whatsapp/status"
FIXTURES = Path(__file__).parent / "fixtures"  # real provider payloads


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def new_sid() -> str:
    return "SM" + secrets.token_hex(16)


def inbound_form(
    body: str,
    *,
    sid: str | None = None,
    sender: str = "whatsapp:+919876543210",
    name: str = "Asha Rao",
) -> list[tuple[str, str]]:
    """An inbound WhatsApp message shaped as Twilio sends it (the shared fixture, with changes)."""
    sid = sid or new_sid()
    changes = {
        "Body": body,
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "From": sender,
        "WaId": sender.removeprefix("whatsapp:+"),
        "ProfileName": name,
    }
    pairs = parse_qsl(fixture_text("twilio_inbound_text.form"), keep_blank_values=True)
    return [(key, changes.get(key, value)) for key, value in pairs]


def status_form(sid: str, status: str) -> list[tuple[str, str]]:
    pairs = parse_qsl(fixture_text("twilio_status_delivered.form"), keep_blank_values=True)
    changes = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status}
    return [(key, changes.get(key, value)) for key, value in pairs]


def signed_headers(
    path: str,
    pairs: Sequence[tuple[str, str]],
    *,
    token: str = TWILIO_TOKEN,
    public_url: str = PUBLIC_URL,
) -> dict[str, str]:
    """Headers exactly as Twilio sends them: the signature over public URL + sorted fields."""
    signature = twilio.sign(token, public_url + path, twilio.FormParams.of(pairs))
    return {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def encode(pairs: Sequence[tuple[str, str]]) -> bytes:
    return urlencode(list(pairs)).encode()


def reply_text(response: httpx.Response) -> str:
    """The text of the TwiML <Message> (empty when there is none)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(response.content)  # noqa: S314 (our own TwiML)
    return "\n".join(message.text or "" for message in root.iter("Message"))


@asynccontextmanager
async def app_client(
    app: Any, base_url: str = "https://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, called from 127.0.0.1; its database is closed afterwards."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http
    finally:
        await app.state.runtime.close()


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """An RFC 9457 problem of this kind that gives nothing secret away."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert str(problem["type"]).endswith(":" + kind)
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert TWILIO_TOKEN not in response.text
    return problem


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A real ``whatsorder serve`` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHATSORDER_")}
    env.update(
        WHATSORDER_DATABASE_URL=database_url,
        WHATSORDER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        WHATSORDER_ADMIN_TOKEN=ADMIN_TOKEN,
        WHATSORDER_PUBLIC_URL=PUBLIC_URL,
        WHATSORDER_REQUIRE_HTTPS="false",
        WHATSORDER_RATE_LIMIT_PER_IP="100000/minute",
        WHATSORDER_RATE_LIMIT_PER_SENDER="100000/minute",
    )
    env.update(extra)
    return env


def whatsorder_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "whatsorder", *args]


@contextmanager
def running_server(
    database_url: str, log_path: Path, *, workers: int = 1, port: int | None = None, **env: str
) -> Iterator[Server]:
    """Start ``whatsorder serve`` (on a free port unless given), wait until it answers, stop it."""
    port = port or free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            whatsorder_command("serve", "--port", str(port), "--workers", str(workers)),
            env=server_env(database_url, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can kill every worker
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()}")
            try:
                if httpx.get(server.base_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start in 30 s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@dataclass(frozen=True)
class Snapshot:
    """What a retailer would check after a storm: orders, lines, ledger, stock, records."""

    orders: int
    order_items: int
    ledger_entries: int
    stock: dict[str, int]
    idempotency_records: int
    retailers: int


async def snapshot(engine: Any) -> Snapshot:
    from sqlalchemy import func, select

    from whatsorder.db.tables import (
        ledger_entries,
        order_items,
        orders,
        products,
        retailers,
        webhook_idempotency,
    )

    async with engine.connect() as connection:

        async def count(table: Any) -> int:
            return int(await connection.scalar(select(func.count()).select_from(table)) or 0)

        stock = {
            row.sku: row.stock
            for row in await connection.execute(select(products.c.sku, products.c.stock))
        }
        return Snapshot(
            orders=await count(orders),
            order_items=await count(order_items),
            ledger_entries=await count(ledger_entries),
            stock=stock,
            idempotency_records=await count(webhook_idempotency),
            retailers=await count(retailers),
        )


# Meta's WhatsApp Cloud API: deliveries shaped like the shared fixtures, signed as Meta signs.

META_APP_SECRET = "test-meta-app-secret"
META_VERIFY_TOKEN = "test-meta-verify-token"
META_PATH = "/api/v1/whatsapp/meta/webhook"
META_SENDER = "919876543210"


def meta_signature(body: bytes, app_secret: str = META_APP_SECRET) -> str:
    """``X-Hub-Signature-256`` as Meta computes it: ``sha256=`` + hex HMAC-SHA256 of the bytes."""
    import hashlib
    import hmac

    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def meta_headers(body: bytes, app_secret: str = META_APP_SECRET) -> dict[str, str]:
    return {
        "X-Hub-Signature-256": meta_signature(body, app_secret),
        "Content-Type": "application/json",
    }


def new_wamid() -> str:
    return "wamid.HBgM" + secrets.token_urlsafe(30)


def meta_text_message(
    text: str, *, wamid: str | None = None, sender: str = META_SENDER
) -> dict[str, Any]:
    """A text message as in ``meta_text.json``, with another text, id and sender."""
    import json

    document = json.loads(fixture_text("meta_text.json"))
    message: dict[str, Any] = document["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update({"from": sender, "id": wamid or new_wamid(), "text": {"body": text}})
    return message


def meta_status(wamid: str, status: str, recipient: str = META_SENDER) -> dict[str, Any]:
    """A status update as in ``meta_status_sent.json``, for another message and state."""
    import json

    document = json.loads(fixture_text("meta_status_sent.json"))
    update: dict[str, Any] = document["entry"][0]["changes"][0]["value"]["statuses"][0]
    update.update({"id": wamid, "status": status, "recipient_id": recipient})
    return update


def meta_delivery(
    messages: Sequence[dict[str, Any]] = (),
    statuses: Sequence[dict[str, Any]] = (),
    *,
    entries: int = 1,
    name: str = "Asha Rao",
) -> bytes:
    """A delivery shaped like ``meta_text.json``: the messages (and a contact per sender) and
    statuses dealt round-robin over ``entries`` entries, as Meta may batch them."""
    import json

    template = json.loads(fixture_text("meta_text.json"))["entry"][0]
    batches = []
    for index in range(entries):
        mine = list(messages[index::entries])
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": template["changes"][0]["value"]["metadata"],
        }
        senders = list(dict.fromkeys(message["from"] for message in mine if "from" in message))
        if senders:
            value["contacts"] = [{"profile": {"name": name}, "wa_id": wa_id} for wa_id in senders]
        if mine:
            value["messages"] = mine
        if statuses[index::entries]:
            value["statuses"] = list(statuses[index::entries])
        batches.append({"id": template["id"], "changes": [{"value": value, "field": "messages"}]})
    document = {"object": "whatsapp_business_account", "entry": batches}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


# Payments: Stripe and Razorpay events signed exactly as the providers sign them.

STRIPE_SECRET = "whsec_test_stripe_endpoint_secret"
RAZORPAY_SECRET = "test-razorpay-webhook-secret"
STRIPE_PATH = "/api/v1/payments/stripe/webhook"
RAZORPAY_PATH = "/api/v1/payments/razorpay/webhook"


def stripe_v1(body: bytes, timestamp: int, secret: str = STRIPE_SECRET) -> str:
    """Stripe's ``v1``: hex HMAC-SHA256 of ``"{t}.{raw body}"`` under the endpoint secret."""
    import hashlib
    import hmac

    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def stripe_headers(
    body: bytes,
    *,
    secret: str = STRIPE_SECRET,
    timestamp: int | None = None,
    extra_v1: Sequence[str] = (),
) -> dict[str, str]:
    """``Stripe-Signature: t=…,v1=…`` as Stripe sends it; ``extra_v1`` go first (rotation)."""
    moment = int(time.time()) if timestamp is None else timestamp
    signatures = [*extra_v1, stripe_v1(body, moment, secret)]
    header = ",".join([f"t={moment}", *(f"v1={signature}" for signature in signatures)])
    return {"Stripe-Signature": header, "Content-Type": "application/json; charset=utf-8"}


def stripe_event(
    order: str | None,
    amount: int,
    *,
    event_type: str = "payment_intent.succeeded",
    event_id: str | None = None,
    payment_id: str | None = None,
    currency: str = "inr",
) -> dict[str, Any]:
    """``stripe_payment_intent_succeeded.json`` pointed at our order, as another event."""
    import json

    event: dict[str, Any] = json.loads(fixture_text("stripe_payment_intent_succeeded.json"))
    event["id"] = event_id or "evt_" + secrets.token_hex(12)
    event["type"] = event_type
    obj: dict[str, Any] = event["data"]["object"]
    obj["id"] = payment_id or obj["id"]
    obj["amount"] = amount
    obj["currency"] = currency
    obj["metadata"] = {} if order is None else {"order_id": order}
    if event_type == "charge.refunded":
        obj.update(
            {
                "id": "ch_" + secrets.token_hex(12),
                "object": "charge",
                "payment_intent": payment_id or "pi_3PqXyZ2eZvKYlo2C1xyz",
                "amount_refunded": amount,
                "refunded": True,
            }
        )
    return event


def stripe_body(event: dict[str, Any]) -> bytes:
    import json

    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def razorpay_signature(body: bytes, secret: str = RAZORPAY_SECRET) -> str:
    """Razorpay's ``X-Razorpay-Signature``: hex HMAC-SHA256 of the raw body."""
    import hashlib
    import hmac

    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def razorpay_headers(
    body: bytes, event_id: str | None = None, *, secret: str = RAZORPAY_SECRET
) -> dict[str, str]:
    headers = {
        "X-Razorpay-Signature": razorpay_signature(body, secret),
        "Content-Type": "application/json",
    }
    if event_id is not None:
        headers["x-razorpay-event-id"] = event_id
    return headers


def new_razorpay_event_id() -> str:
    return "evt_" + secrets.token_hex(7)


def razorpay_event(
    order: str | None,
    amount: int,
    *,
    event: str = "payment.captured",
    payment_id: str = "pay_DESyzxuld02Zul",
    currency: str = "INR",
    refund_id: str | None = None,
) -> bytes:
    """``razorpay_payment_captured.json`` pointed at our order, as ``event``.

    ``order.paid`` adds the order entity; ``payment.failed`` marks the payment failed;
    ``refund.*`` adds the refund entity Razorpay sends (``refund_id``, or a new one), of
    ``amount``.
    """
    import json

    document: dict[str, Any] = json.loads(fixture_text("razorpay_payment_captured.json"))
    document["event"] = event
    payment: dict[str, Any] = document["payload"]["payment"]["entity"]
    payment.update(
        {
            "id": payment_id,
            "amount": amount,
            "base_amount": amount,
            "currency": currency,
            "notes": [] if order is None else {"order_id": order},  # Razorpay's empty notes
        }
    )
    if event == "order.paid":
        document["contains"] = ["payment", "order"]
        document["payload"]["order"] = {
            "entity": {
                "id": payment["order_id"],
                "entity": "order",
                "amount": amount,
                "amount_paid": amount,
                "amount_due": 0,
                "currency": currency,
                "status": "paid",
                "notes": payment["notes"],
            }
        }
    elif event == "payment.failed":
        payment.update({"status": "failed", "captured": False})
    elif event.startswith("refund."):
        document["contains"] = ["refund", "payment"]
        document["payload"]["refund"] = {
            "entity": {
                "id": refund_id or "rfnd_" + secrets.token_hex(7),
                "entity": "refund",
                "amount": amount,
                "currency": currency,
                "payment_id": payment_id,
                "notes": [],
                "status": {"refund.created": "pending", "refund.failed": "failed"}.get(
                    event, "processed"
                ),
            }
        }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
