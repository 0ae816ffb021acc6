"""What a hostile tester sent through the front door, signed as each provider signs, to a real
``whatsorder serve`` with several workers, on SQLite and PostgreSQL: each answer is the right
one, the books balance, and the audit agrees after every scenario.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from conftest import fresh_postgres_database
from support import (
    INBOUND_PATH,
    META_APP_SECRET,
    RAZORPAY_PATH,
    RAZORPAY_SECRET,
    STRIPE_PATH,
    STRIPE_SECRET,
    Server,
    encode,
    inbound_form,
    new_razorpay_event_id,
    new_sid,
    razorpay_event,
    razorpay_headers,
    reply_text,
    running_server,
    signed_headers,
    stripe_body,
    stripe_event,
    stripe_headers,
)
from whatsorder.db import reports
from whatsorder.db.engine import open_database
from whatsorder.db.tables import ledger_entries, orders, retailers, webhook_idempotency
from whatsorder.ordering.demo import DEMO_CATALOGUE
from whatsorder.scheduler import run_cleanup
from whatsorder_idempotency.record import utcnow

PRICE = {product.sku: product.unit_price for product in DEMO_CATALOGUE}
ASHA = "whatsapp:+919876543210"
RAVI = "whatsapp:+919812345678"
ORDER_NUMBER = re.compile(r"ORD-\d{6}")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database for the module on each backend: its scenarios share a server, and the
    audit after each one covers everything sent so far."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("hostile") / "whatsorder.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        yield from fresh_postgres_database(request.getfixturevalue("postgres_template"))


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Four workers on PostgreSQL (as the tester ran it), two on SQLite."""
    workers = 4 if make_url(database_url).get_backend_name() == "postgresql" else 2
    with running_server(
        database_url,
        tmp_path_factory.mktemp("server") / "server.log",
        workers=workers,
        WHATSORDER_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        WHATSORDER_RAZORPAY_WEBHOOK_SECRET=RAZORPAY_SECRET,
        WHATSORDER_META_APP_SECRET=META_APP_SECRET,
    ) as running:
        yield running


class Provider:
    """Sends what the providers send, signed, to the server."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def message(
        self,
        text: str,
        *,
        sender: str = ASHA,
        sid: str | None = None,
        headers: dict[str, str] | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        pairs = inbound_form(text, sid=sid, sender=sender) + (extra or [])
        signed = signed_headers(INBOUND_PATH, pairs) | (headers or {})
        return await self.http.post(INBOUND_PATH, content=encode(pairs), headers=signed)

    async def order(self, text: str, *, sender: str = ASHA) -> str:
        answer = await self.message(text, sender=sender)
        assert answer.status_code == 200, answer.text
        found = ORDER_NUMBER.search(reply_text(answer))
        assert found, reply_text(answer)
        return found.group()

    async def stripe(self, event: dict[str, Any]) -> httpx.Response:
        body = stripe_body(event)
        return await self.http.post(STRIPE_PATH, content=body, headers=stripe_headers(body))

    async def razorpay(self, body: bytes, event_id: str | None = None) -> httpx.Response:
        headers = razorpay_headers(body, event_id or new_razorpay_event_id())
        return await self.http.post(RAZORPAY_PATH, content=body, headers=headers)


async def _with_provider(server: Server, scenario: Any) -> Any:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as http:
        return await scenario(Provider(http))


def _run(server: Server, scenario: Any) -> Any:
    return asyncio.run(_with_provider(server, scenario))


def _audit(database_url: str) -> list[str]:
    async def audit() -> list[str]:
        engine = open_database(database_url)
        try:
            async with engine.connect() as connection:
                return await reports.audit(connection)
        finally:
            await engine.dispose()

    return asyncio.run(audit())


def _query(database_url: str, statement: Any) -> list[Any]:
    async def read() -> list[Any]:
        engine = open_database(database_url)
        try:
            async with engine.connect() as connection:
                return list(await connection.execute(statement))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _refunds_of(database_url: str, payment_id: str) -> list[int]:
    rows = _query(
        database_url,
        select(ledger_entries.c.amount)
        .where(
            ledger_entries.c.entry_type == "refund_reversal",
            ledger_entries.c.payment_ref == payment_id,
        )
        .order_by(ledger_entries.c.id),
    )
    return [row.amount for row in rows]


def _orders_of(database_url: str, sid: str) -> list[str]:
    """Who the orders placed by this message id belong to."""
    rows = _query(
        database_url,
        select(retailers.c.whatsapp_id)
        .join(orders, orders.c.retailer_id == retailers.c.id)
        .where(orders.c.source_message_id == sid),
    )
    return [row.whatsapp_id for row in rows]


def _status(database_url: str, number: str) -> str:
    (row,) = _query(database_url, select(orders.c.status).where(orders.c.id == int(number[4:])))
    return str(row.status)


# ---------------------------------------------------------------------------------------------
# 1 and 2: refunds


def test_partial_refunds_each_post_once_and_add_up_to_what_the_provider_refunded(
    server: Server, database_url: str
) -> None:
    total = 3 * PRICE["SUGAR-1KG"]

    async def scenario(provider: Provider) -> tuple[str, str]:
        by_stripe = await provider.order("ORDER 3 x SUGAR-1KG")
        by_razorpay = await provider.order("ORDER 3 x SUGAR-1KG")
        paid = await provider.stripe(stripe_event(by_stripe, total, payment_id="pi_partial"))
        assert paid.json()["result"] == "credited"
        # Stripe's amount_refunded is the charge's refunded total so far: a third, then all.
        third = stripe_event(
            by_stripe, total // 3, event_type="charge.refunded", payment_id="pi_partial"
        )
        first = await provider.stripe(third)
        assert first.json()["result"] == "reversed", first.text
        assert first.json()["order_status"] == "paid"  # a partial refund leaves it paid
        full = await provider.stripe(
            stripe_event(by_stripe, total, event_type="charge.refunded", payment_id="pi_partial")
        )
        assert full.json()["result"] == "reversed", full.text
        assert full.json()["order_status"] == "refunded"
        again = await provider.stripe(third)  # Stripe's own retry of the first refund
        assert again.status_code == 200
        assert again.headers.get("idempotent-replayed") == "true"
        late = dict(third, id="evt_late_copy")  # the lower total again, under another event
        assert (await provider.stripe(late)).json()["result"] == "already_reversed"

        captured = razorpay_event(by_razorpay, total, payment_id="pay_partial")
        assert (await provider.razorpay(captured)).json()["result"] == "credited"
        one, two = (
            razorpay_event(
                by_razorpay,
                amount,
                event="refund.processed",
                payment_id="pay_partial",
                refund_id=refund_id,
            )
            for amount, refund_id in ((total // 3, "rfnd_one"), (total - total // 3, "rfnd_two"))
        )
        # Two refunds of one payment at the same instant, then the first announced again.
        answers = await asyncio.gather(provider.razorpay(one), provider.razorpay(two))
        assert [answer.json()["result"] for answer in answers] == ["reversed", "reversed"]
        repeated = await provider.razorpay(one)  # another event id, the same refund
        assert repeated.json()["result"] == "already_reversed"
        return by_stripe, by_razorpay

    by_stripe, by_razorpay = _run(server, scenario)
    assert _refunds_of(database_url, "pi_partial") == [-(total // 3), -(total - total // 3)]
    assert sorted(_refunds_of(database_url, "pay_partial")) == sorted(
        [-(total // 3), -(total - total // 3)]
    )
    assert _status(database_url, by_stripe) == "refunded"
    assert _status(database_url, by_razorpay) == "refunded"
    assert _audit(database_url) == []


def test_two_refund_totals_of_one_payment_at_once_reverse_the_higher_total_exactly(
    server: Server, database_url: str
) -> None:
    total = 4 * PRICE["SUGAR-1KG"]

    async def scenario(provider: Provider) -> None:
        number = await provider.order("ORDER 4 x SUGAR-1KG")
        await provider.stripe(stripe_event(number, total, payment_id="pi_race"))
        totals = (total // 4, total // 2, total)
        answers = await asyncio.gather(
            *(
                provider.stripe(
                    stripe_event(number, t, event_type="charge.refunded", payment_id="pi_race")
                )
                for t in totals
            )
        )
        assert {answer.status_code for answer in answers} == {200}, [a.text for a in answers]

    _run(server, scenario)
    assert sum(_refunds_of(database_url, "pi_race")) == -total
    assert _audit(database_url) == []


def test_a_razorpay_refund_created_then_failed_moves_no_money(
    server: Server, database_url: str
) -> None:
    total = PRICE["OIL-1L"]

    async def scenario(provider: Provider) -> str:
        number = await provider.order("ORDER 1 x OIL-1L")
        await provider.razorpay(razorpay_event(number, total, payment_id="pay_kept"))
        created, failed = [
            await provider.razorpay(
                razorpay_event(
                    number, total, event=event, payment_id="pay_kept", refund_id="rfnd_never"
                )
            )
            for event in ("refund.created", "refund.failed")
        ]
        assert created.json()["result"] == "refund_pending"
        assert failed.json()["result"] == "refund_failed"
        assert failed.json()["order_status"] == "paid"
        return number

    number = _run(server, scenario)
    assert _refunds_of(database_url, "pay_kept") == []
    assert _status(database_url, number) == "paid"
    assert _audit(database_url) == []


# ---------------------------------------------------------------------------------------------
# 3: cancels racing orders and each other


def test_cancels_written_in_opposite_orders_racing_new_orders_never_answer_500(
    server: Server, database_url: str
) -> None:
    pairs = 15
    texts = ["ORDER 1 x ATTA-5KG, 1 x TOOR-1KG", "ORDER 1 x TOOR-1KG, 1 x ATTA-5KG"]
    log_before = len(server.log())

    async def scenario(provider: Provider) -> list[httpx.Response]:
        placed = [await provider.order(texts[i % 2]) for i in range(2 * pairs)]
        sids = [new_sid() for _ in range(4 * pairs)]
        sends = [(f"CANCEL {number}", ASHA) for number in placed]
        sends += [(texts[i % 2], RAVI) for i in range(2 * pairs)]

        async def send(index: int) -> httpx.Response:
            text, sender = sends[index]
            return await provider.message(text, sender=sender, sid=sids[index])

        answers = list(await asyncio.gather(*(send(i) for i in range(len(sends)))))
        # A machine out of connections may say 503 + Retry-After (never 500): the provider's
        # retry of the same message then takes effect once.
        for _ in range(5):
            busy = [i for i, answer in enumerate(answers) if answer.status_code == 503]
            if not busy:
                break
            assert all("retry-after" in answers[i].headers for i in busy)
            await asyncio.sleep(1)
            for i in busy:
                answers[i] = await send(i)
        return answers

    answers = _run(server, scenario)
    assert [a.status_code for a in answers] == [200] * len(answers), [
        a.text for a in answers if a.status_code != 200
    ][:3]
    assert all("cancelled" in reply_text(a) for a in answers[: 2 * pairs])
    assert all("placed" in reply_text(a) for a in answers[2 * pairs :])
    # Rows were locked in one order: no transaction deadlocked and had to run again.
    assert "transaction rerun" not in server.log()[log_before:]
    assert _audit(database_url) == []


# ---------------------------------------------------------------------------------------------
# 5 and 7: one message id, other senders and other keys


def test_another_senders_message_id_is_refused_and_never_shows_the_first_senders_order(
    server: Server, database_url: str
) -> None:
    sid = new_sid()

    async def scenario(provider: Provider) -> str:
        first = await provider.message("ORDER 2 x ATTA-5KG", sid=sid)
        confirmation = reply_text(first)
        assert "placed" in confirmation
        with_key = await provider.message(
            "ORDER 1 x RICE-5KG", sender=RAVI, sid=sid, headers={"Idempotency-Key": "ravi-1"}
        )
        _assert_refused(with_key, sid)
        return confirmation

    confirmation = _run(server, scenario)

    async def expire_and_clean() -> None:
        engine = open_database(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    update(webhook_idempotency).values(expires_at=utcnow().replace(year=2000))
                )
            await run_cleanup(engine, trigger="cli")
        finally:
            await engine.dispose()

    asyncio.run(expire_and_clean())

    async def after_cleanup(provider: Provider) -> None:
        without_key = await provider.message("ORDER 1 x RICE-5KG", sender=RAVI, sid=sid)
        _assert_refused(without_key, sid)
        # The refusals kept nothing under the message id: its own sender's retry is answered.
        own_retry = await provider.message("ORDER 2 x ATTA-5KG", sid=sid)
        assert reply_text(own_retry) == confirmation

    _run(server, after_cleanup)
    assert _orders_of(database_url, sid) == [ASHA]
    assert _audit(database_url) == []


def _assert_refused(answer: httpx.Response, sid: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.json()["type"].endswith(":message-id-taken")
    assert sid in answer.json()["detail"]
    assert "ORD-" not in answer.text
    assert "ATTA" not in answer.text


def test_one_message_id_sent_at_once_under_different_keys_is_one_order_and_no_500(
    server: Server, database_url: str
) -> None:
    sid = new_sid()
    postgres = make_url(database_url).get_backend_name() == "postgresql"

    async def scenario(provider: Provider) -> list[httpx.Response]:
        # A known sender: a first message's registration would make the copies take turns.
        await provider.message("MENU")
        copies = [
            asyncio.ensure_future(
                provider.message(
                    "ORDER 1 x TOOR-1KG", sid=sid, headers={"Idempotency-Key": f"k{i}"}
                )
            )
            for i in range(20)
        ]
        if postgres:
            # Every copy has looked for an order of this message and found none, then waits on
            # the product row held here: released, they all race to insert the same order.
            async with _product_row_held(database_url, "TOOR-1KG") as waiting:
                # Released within the lock wait (5 s), or the copies would time out with 503.
                await _until(waiting, at_least=2, seconds=3)
        return await asyncio.gather(*copies)

    answers = _run(server, scenario)
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers][:3]
    assert {reply_text(a) for a in answers} == {reply_text(answers[0])}
    assert "placed" in reply_text(answers[0])
    assert _orders_of(database_url, sid) == [ASHA]
    assert _audit(database_url) == []


@asynccontextmanager
async def _product_row_held(database_url: str, sku: str) -> AsyncIterator[Callable[[], Any]]:
    """Lock a product's row from outside; yields how many sessions wait on a lock."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    holder = await asyncpg.connect(dsn)
    watcher = await asyncpg.connect(dsn)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1 FROM products WHERE sku = $1 FOR UPDATE", sku)

        async def waiting() -> int:
            return int(
                await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )

        yield waiting
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
        await watcher.close()


async def _until(count: Callable[[], Any], *, at_least: int, seconds: float) -> None:
    """Wait until ``await count()`` reaches ``at_least``, or ``seconds`` have passed."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await count() >= at_least:
            return
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# 6: Twilio's fallback retry


def test_twilios_retry_to_the_fallback_url_with_its_error_fields_is_the_same_message(
    server: Server, database_url: str
) -> None:
    sid = new_sid()

    async def scenario(provider: Provider) -> tuple[httpx.Response, httpx.Response]:
        first = await provider.message("ORDER 1 x RICE-5KG", sid=sid)
        fallback = await provider.message(
            "ORDER 1 x RICE-5KG",
            sid=sid,
            extra=[("ErrorCode", "11200"), ("ErrorUrl", "https://shop.example/api/v1/whatsapp")],
        )
        return first, fallback

    first, fallback = _run(server, scenario)
    assert fallback.status_code == 200, fallback.text
    assert fallback.headers.get("idempotent-replayed") == "true"
    assert reply_text(fallback) == reply_text(first)
    assert _orders_of(database_url, sid) == [ASHA]
