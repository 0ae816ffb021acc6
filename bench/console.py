"""The console's pages against a big shop: each page's server time, p50 and p95 (issue #15).

For each SQL store: build a database of ``console_orders`` orders (their lines, ledger entries,
payments, replies) and ``console_records`` idempotency records and deliveries
(`bench.console_data`), start a real ``whatsorder serve`` on it (one worker), sign in, and
request every page ``console_requests`` times in turn, one request at a time. The figure is
the console's own ``Server-Timing`` (request in to headers out: queries and template), so the
client and the loopback stay out of it; the client's time is kept beside it. Bounded: a page
stops early after ``console_page_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench import harness
from bench.console_data import build
from bench.console_shop import Shop
from bench.context import Context
from whatsorder.db.engine import open_database
from whatsorder.db.operators import add_operator
from whatsorder.operators import hash_password
from whatsorder.ordering.model import order_number

sys.path.insert(0, str(harness.ROOT / "tests"))
from support import running_server  # the tests' own way to run the service

TARGET_MS = 100.0
OPERATOR, PASSWORD = "bench", "a bench operator's password"
SECRET = "a console secret for the benchmark, long enough"  # noqa: S105 (a throwaway database)
TIMING = re.compile(r"app;dur=([0-9.]+)")


def measure(ctx: Context, stores: list[str]) -> None:
    s = ctx.settings
    section: dict[str, Any] = ctx.results.setdefault("console", {})
    for store in stores:
        if store == "redis":
            continue  # the console reads the orders database, which is never Redis
        try:
            section[store] = _one_store(ctx, store, Shop(s.console_orders, s.console_records))
        except (RuntimeError, OSError, httpx.HTTPError) as error:
            ctx.log(f"console {store}: could not be measured: {error}")
            section[store] = {"error": str(error).splitlines()[0][:300]}


def _one_store(ctx: Context, store: str, shop: Shop) -> dict[str, Any]:
    with _database(ctx, store) as url:
        ctx.log(f"console {store}: building {shop.orders:,} orders, {shop.records:,} records")
        started = time.monotonic()
        build(url, shop)
        asyncio.run(_add_operator(url))
        load_seconds = time.monotonic() - started
        ctx.log(f"console {store}: built in {load_seconds:.0f} s; timing pages")
        with (
            running_server(
                url, ctx.folder / f"console-{store}.log", WHATSORDER_CONSOLE_SECRET=SECRET
            ) as server,
            httpx.Client(base_url=server.base_url, timeout=60) as client,
        ):
            signed = client.post("/console/login", data={"name": OPERATOR, "password": PASSWORD})
            if signed.status_code != 303:
                raise RuntimeError(f"sign-in answered {signed.status_code}")
            pages = {
                name: _time_page(ctx, client, path) for name, path in pages_to_time(shop).items()
            }
    for name, page in pages.items():
        ctx.log(
            f"console {store}: {name:28} p50 {page['p50_ms']:7.1f} ms p95 {page['p95_ms']:7.1f}"
        )
    return {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "load_seconds": round(load_seconds, 1),
        "rows": shop.counts,
        "pages": pages,
    }


def pages_to_time(shop: Shop) -> dict[str, str]:
    """Every console page, as an operator would open it (with filters that find something)."""
    week_to = shop.placed_at(shop.orders).date() - timedelta(days=30)
    week = {"from": str(week_to - timedelta(days=6)), "to": str(week_to)}
    retailer = shop.retailer_of(shop.orders // 2)
    digits = shop.phone(retailer)[-4:]
    order = next(  # a paid Meta order: lines, ledger, a payment and a reply
        n
        for n in range(shop.orders // 2, 0, -1)
        if shop.source(n)[0] == "meta" and shop.status(n) == "paid"
    )
    deep = max(1, shop.orders * 3 // 4 // 50)
    return {
        "orders, page 1": "/console/orders",
        f"orders, page {deep:,}": f"/console/orders?page={deep}",
        "orders, status paid": "/console/orders?status=paid",
        "orders, one retailer": f"/console/orders?retailer={retailer}",
        "orders, one week": f"/console/orders?from={week['from']}&to={week['to']}",
        "orders, every filter": (
            f"/console/orders?status=placed&retailer={retailer}&from={week['from']}&to={week['to']}"
        ),
        "orders, phone digits": f"/console/orders?q={digits}",
        "orders, order number": f"/console/orders?q={order_number(order)}",
        "order page": f"/console/orders/{order_number(order)}",
        "inbox, page 1": "/console/inbox",
        "inbox, outcome replayed": "/console/inbox?outcome=replayed",
        "payments": "/console/payments",
        "idempotency health": "/console/health",
        "key lookup": f"/console/health?key={shop.source(order)[1]}",
        "catalogue": "/console/catalogue",
        "audit trail": "/console/audit",
        "dead letters": "/console/dead-letters",
        "dead letters, failed re-drives": "/console/dead-letters?state=failed",
        "re-drive preview, Meta": "/console/dead-letters/preview?provider=meta",
    }


def _time_page(ctx: Context, client: httpx.Client, path: str) -> dict[str, Any]:
    s = ctx.settings
    server_ms: list[float] = []
    client_ms: list[float] = []
    statuses: set[int] = set()
    deadline = time.monotonic() + s.console_page_seconds
    client.get(path)  # a first request warms the worker's caches, as an operator's would be
    for _ in range(s.console_requests):
        started = time.perf_counter()
        answer = client.get(path)
        client_ms.append((time.perf_counter() - started) * 1000)
        statuses.add(answer.status_code)
        found = TIMING.search(answer.headers.get("server-timing", ""))
        if found:
            server_ms.append(float(found.group(1)))
        if time.monotonic() > deadline:
            break
    return {
        "path": path,
        "requests": len(client_ms),
        "statuses": sorted(statuses),
        "p50_ms": _quantile(server_ms, 50),
        "p95_ms": _quantile(server_ms, 95),
        "client_p50_ms": _quantile(client_ms, 50),
    }


def _quantile(samples: list[float], q: int) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return round(statistics.quantiles(samples, n=100, method="inclusive")[q - 1], 2)


async def _add_operator(url: str) -> None:
    engine = open_database(url)
    try:
        async with engine.begin() as connection:
            await add_operator(
                connection, OPERATOR, "admin", hash_password(PASSWORD), datetime.now(UTC)
            )
    finally:
        await engine.dispose()


@contextlib.contextmanager
def _database(ctx: Context, store: str) -> Iterator[str]:
    if store == "postgres":
        with harness.pg_database("console") as url:
            yield url
        return
    path = ctx.folder / "console.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
