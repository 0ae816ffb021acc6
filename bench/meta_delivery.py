"""How long one Meta delivery at the 3 MiB body limit (about 5,000 statuses) takes to answer.

Meta gives up on a delivery it waits too long for, and retries it; so a full delivery must be
answered well inside its timeout. Run on each database with the app in process:

    .venv/bin/python -m bench.meta_delivery sqlite
    .venv/bin/python -m bench.meta_delivery postgresql://postgres@127.0.0.1:5432/test

The PostgreSQL URL names an existing database used only to create and drop one of our own.
Prints the first answer's time (every status new) and a redelivery's (every status known).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from whatsorder.db import migrate
from whatsorder.settings import Settings
from whatsorder.web.app import create_app
from whatsorder.web.meta import MAX_BODY_BYTES, PATH

APP_SECRET = "bench-meta-app-secret"  # noqa: S105 (the benchmark's own)
FIXTURE = Path(__file__).parent.parent / "tests" / "fixtures" / "meta_status_sent.json"
STATES = ("sent", "delivered", "read")


def full_delivery() -> tuple[bytes, int]:
    """Statuses shaped as the fixture's, as many as fit under the body limit; and how many."""
    document: dict[str, Any] = json.loads(FIXTURE.read_text())
    template = document["entry"][0]["changes"][0]["value"]["statuses"][0]
    statuses: list[dict[str, Any]] = []
    size = len(json.dumps(document, separators=(",", ":")))
    while True:
        status = {**template, "id": "wamid.HBgM" + secrets.token_urlsafe(30)}
        status["status"] = STATES[len(statuses) % 3]
        size += len(json.dumps(status, separators=(",", ":"))) + 1
        if size > MAX_BODY_BYTES:
            break
        statuses.append(status)
    count = len(statuses)
    document["entry"][0]["changes"][0]["value"]["statuses"] = statuses
    body = json.dumps(document, separators=(",", ":")).encode()
    assert len(body) <= MAX_BODY_BYTES, len(body)
    return body, count


async def post(client: httpx.AsyncClient, body: bytes) -> tuple[float, httpx.Response]:
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
    started = time.perf_counter()
    response = await client.post(PATH, content=body, headers=headers)
    return time.perf_counter() - started, response


async def measure(database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        meta_app_secret=APP_SECRET,
        require_https=False,
        rate_limit_per_ip="1000000/minute",
    )
    app = create_app(settings)
    body, count = full_delivery()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for attempt in ("first delivery", "redelivery"):
                seconds, response = await post(client, body)
                assert response.status_code == 200, response.text[:500]
                print(
                    f"{make_url(database_url).get_backend_name()}: {attempt} of {count} "
                    f"statuses ({len(body) / 2**20:.2f} MiB) answered in {seconds:.2f} s "
                    f"({response.json()})"
                )
    finally:
        await app.state.runtime.database.dispose()


async def admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def main(target: str) -> None:
    if target == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{directory}/bench.db"
            migrate.upgrade(url)
            asyncio.run(measure(url))
        return
    name = f"whatsorder_bench_{secrets.token_hex(4)}"
    asyncio.run(admin(target, f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(target).set(database=name).render_as_string(False)
        migrate.upgrade(url)
        asyncio.run(measure(url))
    finally:
        asyncio.run(admin(target, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite")
