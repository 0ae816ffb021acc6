"""Re-driving dead letters from the console, in process on both databases: once however many
operators press at once, through the webhook's own keys (so Meta's own retry replays), refused
to viewers and to forms without their CSRF token, a batch exactly as previewed, and the kept
delivery never on a page.

A dead letter whose cause can go away: a wamid first seen with other content (a HELP) is kept
when it comes again as an ORDER; once the HELP's idempotency record expired, a re-drive places
the order. (An unknown product in a cart is not a dead letter: the customer is answered.)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    ADMIN_TOKEN,
    META_APP_SECRET,
    META_PATH,
    META_SENDER,
    meta_delivery,
    meta_headers,
    meta_text_message,
    new_wamid,
)
from whatsorder.db.dead_letters import add_dead_letter
from whatsorder.db.operators import add_operator
from whatsorder.db.tables import (
    dead_letters,
    inbound_deliveries,
    operator_actions,
    orders,
    webhook_idempotency,
)
from whatsorder.operators import hash_password
from whatsorder.scheduler import run_cleanup

PASSWORD = "correct horse battery"
SECRET = "a console secret for tests, long enough"


@pytest.fixture
async def app(app_factory: Callable[..., FastAPI], db: AsyncEngine) -> AsyncIterator[FastAPI]:
    application = app_factory(console_secret=SECRET, meta_app_secret=META_APP_SECRET)
    async with db.begin() as connection:
        for name, role in (("asha", "operator"), ("bo", "operator"), ("vik", "viewer")):
            await add_operator(connection, name, role, hash_password(PASSWORD), datetime.now(UTC))
    yield application
    await application.state.runtime.close()


@asynccontextmanager
async def signed_in(app: FastAPI, name: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own (its own session cookie), signed in as ``name`` unless None."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        if name is not None:
            answer = await http.post("/console/login", data={"name": name, "password": PASSWORD})
            assert answer.status_code == 303, answer.text
        yield http


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "the page has no CSRF token"
    return found.group(1)


async def deliver(http: httpx.AsyncClient, body: bytes) -> dict[str, Any]:
    answer = await http.post(META_PATH, content=body, headers=meta_headers(body))
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def kept_order(app: FastAPI, db: AsyncEngine, text: str = "ORDER 1 x ATTA-5KG") -> bytes:
    """A dead letter whose cause is gone: its wamid was a HELP, whose record then expired.
    The delivery it came in (what Meta would retry), returned."""
    wamid = new_wamid()
    async with signed_in(app, None) as http:
        await deliver(http, meta_delivery([meta_text_message("HELP", wamid=wamid)]))
        body = meta_delivery([meta_text_message(text, wamid=wamid)])
        assert (await deliver(http, body))["dead_lettered"] == 1
    async with db.begin() as connection:  # a day passes: the HELP's record expires
        await connection.execute(
            update(webhook_idempotency)
            .where(webhook_idempotency.c.idempotency_key == wamid)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    return body


async def letters(db: AsyncEngine) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        rows = await connection.execute(select(dead_letters).order_by(dead_letters.c.id))
        return [dict(row) for row in rows.mappings()]


async def count(db: AsyncEngine, table: Any) -> int:
    async with db.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def press(http: httpx.AsyncClient, letter_id: int) -> httpx.Response:
    """What the Re-drive button does: post its form, with the page's CSRF token."""
    page = await http.get("/console/dead-letters")
    return await http.post(
        f"/console/dead-letters/{letter_id}/redrive", data={"csrf_token": csrf_of(page)}
    )


async def test_a_redriven_dead_letter_places_one_order_and_metas_retry_then_replays(
    app: FastAPI, db: AsyncEngine
) -> None:
    body = await kept_order(app, db)
    [letter] = await letters(db)
    assert letter["payload"] == body.decode()

    async with signed_in(app, "asha") as http:
        answer = await press(http, letter["id"])
        assert answer.status_code == 200, answer.text
        assert f"Dead letter {letter['id']} re-driven: order ORD-000001 created." in answer.text
        again = await press(http, letter["id"])
        assert again.status_code == 409
        assert "was re-driven already by asha: order ORD-000001 created" in again.text
        async with signed_in(app, None) as meta:
            retried = await deliver(meta, body)  # Meta's own retry, after the re-drive
        assert retried == {"received": 1, "statuses": 0, "dead_lettered": 0}

    assert await count(db, orders) == 1
    [letter] = await letters(db)  # no second dead letter from the re-drive or the retry
    assert letter["redrive_state"] == "done"
    assert letter["redriven_by"] == "asha"
    assert letter["redrive_result"] == "order ORD-000001 created"
    assert letter["payload"] is None  # nothing left to re-drive, nothing kept
    async with db.connect() as connection:
        audit = (
            await connection.execute(
                select(operator_actions).where(operator_actions.c.action == "dead-letter.redrive")
            )
        ).all()
    assert len(audit) == 1
    assert audit[0].operator == "asha"
    assert '"state": "done"' in audit[0].after
    runtime = app.state.runtime
    await runtime.inbox.flush(runtime.database)
    async with db.connect() as connection:
        noted = (
            await connection.execute(
                select(inbound_deliveries.c.webhook_type, inbound_deliveries.c.outcome).order_by(
                    inbound_deliveries.c.id
                )
            )
        ).all()
    # the HELP, the ORDER refused (mismatch, kept), the re-drive, and Meta's retry replayed
    messages = [outcome for kind, outcome in noted if kind == "meta_message"]
    assert messages[0] == "new"
    assert messages[-1] == "replayed"
    assert messages[-2] in {"new", "takeover"}  # the re-drive's own delivery


async def test_a_dead_letter_whose_cause_remains_fails_again_and_stays_redrivable(
    app: FastAPI, db: AsyncEngine
) -> None:
    wamid = new_wamid()
    async with signed_in(app, None) as http:
        await deliver(http, meta_delivery([meta_text_message("HELP", wamid=wamid)]))
        await deliver(http, meta_delivery([meta_text_message("ORDER 1 x ATTA-5KG", wamid=wamid)]))
    [letter] = await letters(db)

    async with signed_in(app, "asha") as http:
        answer = await press(http, letter["id"])
        assert answer.status_code == 200
        assert "re-driven but not processed: rejected again: This wamid was processed" in (
            answer.text
        )
        assert f"Re-drive {letter['id']}" in answer.text  # still offered

    [after] = await letters(db)  # the same row: a re-drive keeps no dead letter of its own
    assert (after["id"], after["redrive_state"]) == (letter["id"], "failed")
    assert after["payload"] == letter["payload"]
    assert await count(db, orders) == 0


UNREADABLE = {
    "a delivery that is not JSON": (b'{"entry": [ not json', "The body is not JSON."),
    "a message without an id": (
        meta_delivery([{**meta_text_message("ORDER 1 x ATTA-5KG"), "id": None}]),
        "A message id is missing.",
    ),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
async def test_what_today_still_cannot_read_is_rejected_again(
    app: FastAPI, db: AsyncEngine, case: str
) -> None:
    body, reason = UNREADABLE[case]
    async with signed_in(app, None) as http:
        await deliver(http, body)
    [letter] = await letters(db)
    async with signed_in(app, "asha") as http:
        answer = await press(http, letter["id"])
    assert f"rejected again: {reason}" in answer.text
    assert [row["redrive_state"] for row in await letters(db)] == ["failed"]
    assert await count(db, orders) == 0


@pytest.mark.parametrize("letter_id", ["404", "-1", str(2**70)])
async def test_a_dead_letter_that_does_not_exist_is_404(app: FastAPI, letter_id: str) -> None:
    async with signed_in(app, "asha") as http:
        page = await http.get("/console/dead-letters")
        answer = await http.post(
            f"/console/dead-letters/{letter_id}/redrive", data={"csrf_token": csrf_of(page)}
        )
    assert answer.status_code == 404
    assert f"There is no dead letter {letter_id}." in answer.text


async def test_two_operators_pressing_at_the_same_instant_make_one_order(
    app: FastAPI, db: AsyncEngine
) -> None:
    await kept_order(app, db)
    [letter] = await letters(db)
    async with signed_in(app, "asha") as asha, signed_in(app, "bo") as bo:
        pages = [await http.get("/console/dead-letters") for http in (asha, bo)]
        answers = await asyncio.gather(
            *(
                http.post(
                    f"/console/dead-letters/{letter['id']}/redrive",
                    data={"csrf_token": csrf_of(page)},
                )
                for http, page in zip((asha, bo), pages, strict=True)
            )
        )
    assert sorted(answer.status_code for answer in answers) == [200, 409]
    [refused] = [answer for answer in answers if answer.status_code == 409]
    assert re.search(
        r"is being re-driven by (asha|bo) right now|re-driven already by", refused.text
    )
    assert await count(db, orders) == 1


async def test_a_viewer_and_a_form_without_its_csrf_token_are_refused(
    app: FastAPI, db: AsyncEngine
) -> None:
    await kept_order(app, db)
    [letter] = await letters(db)
    async with signed_in(app, "vik") as viewer:
        page = await viewer.get("/console/dead-letters")
        assert f"Re-drive {letter['id']}" not in page.text  # no button for a viewer
        preview = await viewer.get("/console/dead-letters/preview")
        assert "These 1 will be re-driven." in preview.text
        assert "Re-drive these" not in preview.text  # and no confirm form
        refused = await viewer.post(
            f"/console/dead-letters/{letter['id']}/redrive", data={"csrf_token": csrf_of(page)}
        )
        assert refused.status_code == 403
        assert "viewer" in refused.text
    async with signed_in(app, "asha") as http:
        refused = await http.post(f"/console/dead-letters/{letter['id']}/redrive", data={})
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        batch = await http.post("/console/dead-letters/redrive", data={"id": str(letter["id"])})
        assert batch.status_code == 403
    async with signed_in(app, None) as stranger:
        answer = await stranger.post(f"/console/dead-letters/{letter['id']}/redrive")
        assert answer.status_code == 303  # to sign in
    assert (await letters(db))[0]["redrive_state"] is None
    assert await count(db, orders) == 0


async def test_a_batch_redrives_exactly_what_its_preview_showed(
    app: FastAPI, db: AsyncEngine
) -> None:
    for _ in range(3):
        await kept_order(app, db)
    async with db.begin() as connection:  # kept before re-drives existed: no payload
        await add_dead_letter(connection, "meta", "k-old", "old reason", "{}", datetime.now(UTC))
    async with signed_in(app, "asha") as http:
        listed = await http.get("/console/dead-letters")
        assert "Cannot be re-driven: its content is not kept" in listed.text
        preview = await http.get("/console/dead-letters/preview", params={"provider": "meta"})
        assert preview.status_code == 200
        assert "These 3 will be re-driven." in preview.text
        ids = re.findall(r'name="id" value="(\d+)"', preview.text)
        assert len(ids) == 3
        # Another delivery arrives after the preview: it is not in the batch.
        await kept_order(app, db)
        done = await http.post(
            "/console/dead-letters/redrive",
            data={"csrf_token": csrf_of(preview), "id": ids},
        )
        assert done.status_code == 200, done.text
        assert "3 re-driven: 3 done, 0 failed, 0 skipped." in done.text
        again = await http.post(
            "/console/dead-letters/redrive", data={"csrf_token": csrf_of(preview), "id": ids}
        )
        assert "3 re-driven: 0 done, 0 failed, 3 skipped." in again.text  # once only
    assert await count(db, orders) == 3
    states = [row["redrive_state"] for row in await letters(db)]
    assert states == ["done", "done", "done", None, None]


@pytest.mark.parametrize(
    "ids",
    [[], ["1", "x"], [str(n) for n in range(1, 502)], ["-1"]],
    ids=["none", "not a number", "over the bound", "negative"],
)
async def test_a_batch_form_out_of_shape_is_refused_with_a_reason(
    app: FastAPI, db: AsyncEngine, ids: list[str]
) -> None:
    async with signed_in(app, "asha") as http:
        page = await http.get("/console/dead-letters")
        answer = await http.post(
            "/console/dead-letters/redrive", data={"csrf_token": csrf_of(page), "id": ids}
        )
    assert answer.status_code == 400
    assert "Preview again, then confirm" in answer.text


@pytest.mark.parametrize(
    "query",
    [{"received_from": "yesterday"}, {"state": "lost"}, {"provider": "fax"}],
)
async def test_a_filter_the_page_cannot_apply_says_why(app: FastAPI, query: dict[str, str]) -> None:
    async with signed_in(app, "asha") as http:
        for path in ("/console/dead-letters", "/console/dead-letters/preview"):
            answer = await http.get(path, params=query)
            assert answer.status_code == 400
            assert 'class="problem"' in answer.text


async def test_filters_narrow_the_preview(app: FastAPI, db: AsyncEngine) -> None:
    await kept_order(app, db)
    async with signed_in(app, "asha") as http:
        today = datetime.now(UTC).date()
        for query, expected in (
            ({"reason": "other content"}, "These 1 will be re-driven."),
            ({"reason": "no such reason"}, "Nothing to re-drive"),
            ({"received_to": str(today - timedelta(days=1))}, "Nothing to re-drive"),
            ({"received_from": str(today), "state": "never"}, "These 1 will be re-driven."),
            ({"state": "done"}, "Nothing to re-drive"),
        ):
            preview = await http.get("/console/dead-letters/preview", params=query)
            assert expected in preview.text, query


async def test_a_redrive_left_running_by_a_crash_can_be_redriven_after_five_minutes(
    app: FastAPI, db: AsyncEngine
) -> None:
    await kept_order(app, db)
    [letter] = await letters(db)
    claimed = datetime.now(UTC)
    async with db.begin() as connection:  # a server stopped between the claim and the outcome
        await connection.execute(
            update(dead_letters).values(
                redrive_state="running", redriven_by="bo", redriven_at=claimed
            )
        )
    async with signed_in(app, "asha") as http:
        refused = await press(http, letter["id"])
        assert refused.status_code == 409
        assert "is being re-driven by bo right now" in refused.text
        async with db.begin() as connection:
            await connection.execute(
                update(dead_letters).values(redriven_at=claimed - timedelta(minutes=6))
            )
        answer = await press(http, letter["id"])
        assert answer.status_code == 200
        assert "order ORD-000001 created" in answer.text
    assert await count(db, orders) == 1


async def test_no_page_shows_the_kept_delivery(app: FastAPI, db: AsyncEngine) -> None:
    await kept_order(app, db)
    [letter] = await letters(db)
    assert META_SENDER in letter["payload"]  # the full number is in what is kept...
    runtime = app.state.runtime
    async with signed_in(app, "asha") as http:
        seen = [await http.get("/console/dead-letters")]
        seen.append(await http.get("/console/dead-letters/preview"))
        seen.append(await press(http, letter["id"]))
        await runtime.inbox.flush(runtime.database)
        for path in ("/console/inbox", "/console/audit", "/console/orders"):
            seen.append(await http.get(path))
        seen.append(
            await http.get(
                "/api/v1/admin/dead-letters", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
        )
    for answer in seen:  # ...and on no page
        assert answer.status_code == 200, answer.url
        assert META_SENDER not in answer.text, answer.url
    inbox = seen[3].text
    assert f"dead letter {letter['id']}</a>: re-drive done (order ORD-000001 created)" in inbox


async def test_the_cleanup_drops_payloads_past_their_retention(
    app: FastAPI, db: AsyncEngine
) -> None:
    await kept_order(app, db)
    await kept_order(app, db)
    old = datetime.now(UTC) - timedelta(days=31)
    async with db.begin() as connection:
        first = await connection.scalar(select(func.min(dead_letters.c.id)))
        await connection.execute(
            update(dead_letters).where(dead_letters.c.id == first).values(received_at=old)
        )
    run = await run_cleanup(db, trigger="cli", payload_days=30)
    assert run.payloads_cleared == 1
    kept = await letters(db)
    assert [row["payload"] is None for row in kept] == [True, False]
    async with signed_in(app, "asha") as http:
        refused = await press(http, kept[0]["id"])
    assert refused.status_code == 409
    assert "its content is not kept" in refused.text


async def test_a_redrive_and_metas_own_retry_at_the_same_instant_make_one_order(
    app: FastAPI, db: AsyncEngine
) -> None:
    body = await kept_order(app, db)
    [letter] = await letters(db)
    async with signed_in(app, "asha") as http, signed_in(app, None) as meta:
        page = await http.get("/console/dead-letters")
        redriven, retried = await asyncio.gather(
            http.post(
                f"/console/dead-letters/{letter['id']}/redrive", data={"csrf_token": csrf_of(page)}
            ),
            meta.post(META_PATH, content=body, headers=meta_headers(body)),
        )
    assert redriven.status_code == 200, redriven.text
    assert retried.status_code in {200, 503}, retried.text  # 503: in flight, Meta retries
    assert await count(db, orders) == 1
    [after] = await letters(db)
    assert after["redrive_state"] in {"done", "failed"}
    if after["redrive_state"] == "done":  # it ran, or found the retry's order and replayed it
        assert "ORD-000001" in after["redrive_result"]


async def test_a_redrive_after_metas_own_retry_placed_the_order_replays_it(
    app: FastAPI, db: AsyncEngine
) -> None:
    body = await kept_order(app, db)
    [letter] = await letters(db)
    async with signed_in(app, None) as meta:
        assert (await deliver(meta, body))["dead_lettered"] == 0  # Meta's retry: the order
    async with signed_in(app, "asha") as http:
        answer = await press(http, letter["id"])
    assert "re-driven: already processed: replayed order ORD-000001." in answer.text
    assert await count(db, orders) == 1
