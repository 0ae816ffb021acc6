"""What an operator sees: statistics that match what happened, admin auth, readiness."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from support import (
    ADMIN_TOKEN,
    INBOUND_PATH,
    app_client,
    assert_problem,
    encode,
    inbound_form,
    signed_headers,
)
from whatsorder.clock import utcnow
from whatsorder.db.tables import webhook_idempotency

STATS_PATH = "/api/v1/admin/idempotency/stats"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def post(client: httpx.AsyncClient, pairs: list[tuple[str, str]]) -> httpx.Response:
    return await client.post(
        INBOUND_PATH, content=encode(pairs), headers=signed_headers(INBOUND_PATH, pairs)
    )


async def test_statistics_reflect_a_scripted_sequence_exactly(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    order = inbound_form("ORDER 1 x TOOR-1KG", sid="SM" + "a" * 32)
    assert (await post(client, order)).status_code == 200  # new
    for _ in range(2):
        assert (await post(client, order)).headers["idempotent-replayed"] == "true"
    other_body = inbound_form("ORDER 9 x TOOR-1KG", sid="SM" + "a" * 32)
    assert (await post(client, other_body)).status_code == 422  # mismatch
    # A lease-mode holder is working on this key right now: a conflict.
    busy_sid = "SM" + "b" * 32
    async with db.begin() as connection:
        now = utcnow()
        await connection.execute(
            insert(webhook_idempotency).values(
                webhook_type="twilio_inbound",
                idempotency_key=busy_sid,
                fingerprint="someone else's",
                status="in_progress",
                epoch=1,
                locked_until=now + timedelta(minutes=1),
                created_at=now,
            )
        )
    conflict = await post(client, inbound_form("MENU", sid=busy_sid))
    assert conflict.status_code == 409

    stats = (await client.get(STATS_PATH, headers=ADMIN)).json()

    hour = stats["last_hour"]
    assert (hour["new"], hour["replays"], hour["mismatches"], hour["conflicts"]) == (1, 2, 1, 1)
    assert hour["requests"] == 5
    assert hour["retry_hit_rate"] == 0.5  # 2 replays of 4 retries
    assert stats["last_day"]["replays"] == 2
    records = stats["records"]
    assert records["by_webhook_type"] == {"twilio_inbound": {"completed": 1, "in_progress": 1}}
    assert records["total"] == 2
    assert records["expired_awaiting_cleanup"] == 0
    assert records["oldest"] is not None
    assert records["table_bytes"] > 0
    assert stats["last_cleanup"] is None


async def test_the_stats_api_needs_the_admin_token(
    client: httpx.AsyncClient, app_factory: Callable[..., FastAPI]
) -> None:
    assert_problem(await client.get(STATS_PATH), 401, "unauthenticated")
    wrong = await client.get(STATS_PATH, headers={"Authorization": "Bearer nope"})
    assert_problem(wrong, 403, "forbidden")
    async with app_client(app_factory(admin_token=None)) as unconfigured:
        assert_problem(
            await unconfigured.get(STATS_PATH, headers=ADMIN), 503, "admin-not-configured"
        )


async def test_readiness_says_ready_on_a_current_schema(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


async def test_readiness_fails_with_the_reason_when_the_database_is_gone(
    app_factory: Callable[..., FastAPI],
) -> None:
    app = app_factory(database_url="postgresql://nobody@127.0.0.1:1/gone")
    async with app_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "database unreachable" in response.json()["reason"]


async def test_readiness_fails_on_a_schema_that_is_behind(
    app_factory: Callable[..., FastAPI], tmp_path: object
) -> None:
    app = app_factory(database_url=f"sqlite:///{tmp_path}/empty.db")
    async with app_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "whatsorder migrate" in response.json()["reason"]


def test_the_stats_command_prints_the_same_figures(database_url: str) -> None:
    import json
    import subprocess

    from support import server_env, whatsorder_command

    run = subprocess.run(
        whatsorder_command("stats", "--json"),
        env=server_env(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    assert figures["records"]["total"] == 0
    assert figures["last_hour"]["requests"] == 0
    text = subprocess.run(
        whatsorder_command("stats"),
        env=server_env(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "retry hit rate" in text.stdout
    assert "last cleanup:       never" in text.stdout


async def test_dead_letters_show_in_the_stats_and_the_admin_api(
    client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    from whatsorder.db.tables import dead_letters

    async with db.begin() as connection:
        await connection.execute(
            insert(dead_letters).values(
                provider="meta", reason="not JSON", body="{oops", received_at=utcnow()
            )
        )
    stats = (await client.get(STATS_PATH, headers=ADMIN)).json()
    assert stats["dead_letters"] == {"total": 1, "last_day": 1}
    listed = (await client.get("/api/v1/admin/dead-letters", headers=ADMIN)).json()
    assert [(row["provider"], row["reason"]) for row in listed["dead_letters"]] == [
        ("meta", "not JSON")
    ]
    assert_problem(await client.get("/api/v1/admin/dead-letters"), 401, "unauthenticated")
