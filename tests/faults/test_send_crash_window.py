"""The outbox's crash window, measured: senders SIGKILLed around their sends.

Neither Twilio nor Meta documents send-side idempotency, so a sender killed after the provider
accepted a message and before our commit recorded it sends that message again after its lease.
Here a sender of each provider runs alone in a child process (``faults.outbox_worker``) against
a fake provider on 127.0.0.1 that counts every acceptance per notification; it is killed at
random moments, restarted, and at the end every notification must have arrived, none lost,
and the duplicates are counted and reported: sends per notification, duplicates per kill, and
the window itself (the record's commit after an acceptance), timed by the sender. A kill placed
inside the window on purpose shows what one costs: exactly one duplicate.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from fake_graph import FakeGraph, serving
from fake_twilio import FakeTwilio
from faults.modes import report, scaled
from whatsorder.clock import utcnow
from whatsorder.db.engine import open_database
from whatsorder.db.tables import outbox_messages

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TESTS = Path(__file__).resolve().parent.parent

NOTIFICATIONS = scaled(60, 1500)
KILLS = scaled(4, 100)
DEADLINE = scaled(90, 900)  # seconds for the whole run, kills and the final drain


def _queue(url: str, provider: str, count: int) -> list[str]:
    """``count`` notifications, each with a body of its own (what the fakes count by)."""
    bodies = [f"Notification {number} of {count}" for number in range(count)]
    now = utcnow()
    recipient = "whatsapp:+919876543210" if provider == "twilio" else "919876543210"
    rows = [
        {
            "provider": provider,
            "recipient": recipient,
            "body": body,
            "idempotency_key": f"crash-window:{number}",
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "proactive": False,
        }
        for number, body in enumerate(bodies)
    ]

    async def write() -> None:
        database = open_database(url)
        try:
            async with database.begin() as connection:
                await connection.execute(insert(outbox_messages), rows)
        finally:
            await database.dispose()

    asyncio.run(write())
    return bodies


def _unsent(url: str) -> int:
    async def count() -> int:
        database = open_database(url)
        try:
            async with database.connect() as connection:
                found = await connection.scalar(
                    select(func.count()).where(outbox_messages.c.status != "sent")
                )
        finally:
            await database.dispose()
        return int(found or 0)

    return asyncio.run(count())


def _start(
    url: str, provider: str, api_url: str, timings: Path, log: Path, kill_after_accept: bool
) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("WHATSORDER_TEST_KILL_AFTER_ACCEPT", None)
    if kill_after_accept:
        env["WHATSORDER_TEST_KILL_AFTER_ACCEPT"] = "1"
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "faults.outbox_worker", url, provider, api_url, str(timings)],
            env=env,
            cwd=TESTS,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _wait_for(condition: Callable[[], bool], seconds: float, every: float = 0.01) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def _fake(provider: str) -> tuple[FakeTwilio | FakeGraph, Callable[[], list[str]], str]:
    """The fake provider, what it accepted (one body per acceptance) and its API's path."""
    if provider == "twilio":
        twilio = FakeTwilio()
        return twilio, lambda: [send.body or "" for send in twilio.delivered], ""
    graph = FakeGraph()
    # The fake Graph delivers a repeated Idempotency-Key once; every acceptance is a send.
    return graph, lambda: [send.payload["text"]["body"] for send in graph.sends], "/v21.0"


@pytest.mark.parametrize("provider", ["twilio", "meta"])
def test_senders_killed_around_their_sends_lose_nothing_and_duplicates_are_counted(
    postgres_url: str, tmp_path: Path, provider: str
) -> None:
    bodies = _queue(postgres_url, provider, NOTIFICATIONS)
    fake, accepted, api_path = _fake(provider)
    timings, log = tmp_path / "timings.txt", tmp_path / "worker.log"
    rng = random.Random(16)
    started = time.monotonic()
    kills = 0
    with serving(fake.app) as base_url:
        api_url = base_url + api_path
        # One kill inside the window on purpose: the first acceptance is never recorded.
        process = _start(postgres_url, provider, api_url, timings, log, kill_after_accept=True)
        assert _wait_for(lambda: process.poll() is not None, 30), log.read_text()[-3000:]
        targeted = len(accepted())
        # Then kills at random moments while the sender is at work.
        while kills < KILLS and time.monotonic() - started < DEADLINE / 2:
            if _unsent(postgres_url) == 0:
                break
            process = _start(postgres_url, provider, api_url, timings, log, False)
            before = len(accepted())
            if _wait_for(lambda: len(accepted()) > before, 30):  # noqa: B023
                time.sleep(rng.uniform(0.0, 0.25))  # a random moment of its sending
            _kill(process)
            kills += 1
        process = _start(postgres_url, provider, api_url, timings, log, False)
        try:
            drained = _wait_for(
                lambda: _unsent(postgres_url) == 0,
                DEADLINE - (time.monotonic() - started),
                every=0.25,
            )
            time.sleep(2)  # a lease's length: a second send of a row would show now
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill(process)
        received = Counter(accepted())

    assert drained, f"{_unsent(postgres_url)} notifications never sent:\n{log.read_text()[-3000:]}"
    assert targeted == 1
    assert set(received) == set(bodies), "a notification was lost"
    duplicates = sum(count - 1 for count in received.values())
    assert received[bodies[0]] >= 2, "the acceptance killed before its commit was sent again"
    # A sender has one send out at a time: a kill can cost one duplicate at most.
    assert duplicates <= kills + 1

    windows, cycles = _timings(timings)
    random_duplicates = duplicates - 1
    report(
        f"\noutbox crash window ({provider}): {NOTIFICATIONS} notifications, {kills} random kills "
        f"of the sender + 1 inside the window; {sum(received.values())} acceptances "
        f"({sum(received.values()) / NOTIFICATIONS:.3f} sends per notification), "
        f"{random_duplicates} duplicates from the random kills "
        f"({random_duplicates / max(kills, 1):.3f} per kill), 1 from the kill inside the window; "
        f"window (acceptance → commit) p50 {statistics.median(windows) * 1000:.1f} ms, "
        f"max {max(windows) * 1000:.1f} ms, of a send-and-record p50 "
        f"{statistics.median(cycles) * 1000:.1f} ms "
        f"({statistics.median(windows) / statistics.median(cycles):.1%})"
    )


def _timings(path: Path) -> tuple[list[float], list[float]]:
    pairs = [line.split() for line in path.read_text().splitlines() if line.strip()]
    assert pairs, "the sender timed no acceptance"
    return [float(window) for window, _ in pairs], [float(cycle) for _, cycle in pairs]
