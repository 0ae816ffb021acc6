"""Workers SIGKILLed mid-request, hundreds of times: every webhook still takes effect once.

A real ``whatsorder serve --workers N`` on PostgreSQL, whose workers kill themselves (see
``faults.crash_server``) before the claim, after the claim, after the business writes but
before the commit, and after the commit but before the response. uvicorn restarts each dead
worker; the provider retries what went unanswered. Afterwards the books must say exactly what
the provider saw acknowledged, and ``whatsorder audit`` must pass.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from faults.books import audit, check_books, restock
from faults.crash_server import POINTS
from faults.harness import Kills, whatsorder_with_kills
from faults.modes import FULL, report, scaled
from faults.provider import Provider, Shop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RANDOM_KILLS = scaled(50, 500)
KILL_CHANCE = 0.12  # at each point a request reaches: about two attempts in five die


def _report(title: str, shop: Shop, kills: Kills, seconds: float) -> str:
    tally = shop.provider.tally
    points = ", ".join(f"{point} {kills.by_point[point]}" for point in POINTS)
    answers = ", ".join(
        f"{answer} x{count} (p50 {tally.percentile(answer, 0.5):.2f} s, "
        f"max {tally.slowest(answer):.2f} s)"
        for answer, count in sorted(tally.answers.items())
    )
    return (
        f"\n{title}: {kills.total} kills ({points}); {shop.customers} customers, "
        f"{tally.deliveries} deliveries ({len(shop.expected.orders)} orders, "
        f"{len(shop.expected.payments)} payments acknowledged), {tally.attempts} attempts, "
        f"{tally.retries} retries; answers: {answers}; {seconds:.1f} s"
    )


def _assert_exactly_once(database_url: str, shop: Shop) -> None:
    tally = shop.provider.tally
    assert tally.answers["500"] == 0, "a 500 reached the provider"
    assert not tally.refused, f"deliveries refused: {tally.refused[:3]}"
    assert not tally.unanswered, f"{len(tally.unanswered)} deliveries never acknowledged"
    assert not shop.expected.wrong_replies, shop.expected.wrong_replies[:3]
    problems = check_books(database_url, shop.expected)
    assert not problems, "\n".join(problems[:20])
    checked = audit(database_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_request_killed_once_at_each_point_takes_effect_once(
    private_database: str, tmp_path: Path
) -> None:
    """Each delivery dies at each point in turn (once per point), and then gets its answer."""
    customers = scaled(3, 40)
    asyncio.run(restock(private_database, 10_000))
    started = time.monotonic()
    with whatsorder_with_kills(
        private_database,
        tmp_path,
        workers=3,
        points=dict.fromkeys(POINTS, 1.0),
        once_per_key=True,
    ) as (server, kill_log):

        async def traffic() -> Shop:
            async with Provider(server.base_url) as provider:
                shop = Shop(provider)
                await shop.run(customers=customers, concurrency=3, seconds=scaled(60, 300))
                return shop

        shop = asyncio.run(traffic())
    kills = Kills.read(kill_log)
    report(_report("each point once per delivery", shop, kills, time.monotonic() - started))

    _assert_exactly_once(private_database, shop)
    deliveries = set(shop.expected.orders) | set(shop.expected.payments)
    assert len(deliveries) == 2 * customers
    assert set(kills.keys) == deliveries
    # Nothing commits without passing the first three points, so each delivery died at each.
    # A delivery whose commit went through just as another request killed its worker is
    # replayed on its retry, never reaching after_commit as new: at most once there.
    before = {point: kills.by_point[point] for point in POINTS[:3]}
    assert before == dict.fromkeys(POINTS[:3], len(deliveries)), kills.by_point
    assert 0 < kills.by_point["after_commit"] <= len(deliveries), kills.by_point


def test_hundreds_of_random_kills_lose_no_order_and_duplicate_nothing(
    private_database: str, tmp_path: Path
) -> None:
    asyncio.run(restock(private_database, 100_000))
    started = time.monotonic()
    with whatsorder_with_kills(
        private_database,
        tmp_path,
        workers=4,
        points=dict.fromkeys(POINTS, KILL_CHANCE),
    ) as (server, kill_log):

        async def traffic() -> Shop:
            async with Provider(server.base_url) as provider:
                shop = Shop(provider)
                await shop.run(
                    customers=RANDOM_KILLS * 4,
                    concurrency=6,
                    seconds=scaled(60, 720),
                    enough=lambda: Kills.read(kill_log).total >= RANDOM_KILLS,
                )
                return shop

        shop = asyncio.run(traffic())
    kills = Kills.read(kill_log)
    mode = "full" if FULL else "quick"
    report(_report(f"random kills ({mode})", shop, kills, time.monotonic() - started))

    assert kills.total >= RANDOM_KILLS, f"only {kills.total} kills delivered"
    assert all(kills.by_point[point] > 0 for point in POINTS), kills.by_point
    _assert_exactly_once(private_database, shop)
