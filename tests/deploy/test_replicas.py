"""Three `whatsorder serve` replicas behind nginx (TLS ends there) on one PostgreSQL.

The tests share one cluster and run in file order: the first counts metrics from the replicas'
start, the rolling upgrade (which replaces the processes, and so their metrics) comes last.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from deploy.cluster import (
    CHECK,
    GRACEFUL_TIMEOUT_SECONDS,
    ROLLING_RESTART,
    Cluster,
    metric,
    trusting,
)
from deploy.delivery import Cost, Delivery, Provider, keep_delivering
from support import (
    ADMIN_TOKEN,
    INBOUND_PATH,
    encode,
    inbound_form,
    server_env,
    signed_headers,
    whatsorder_command,
)
from whatsorder import statistics
from whatsorder.db.engine import open_database
from whatsorder.db.tables import orders
from whatsorder_idempotency.cleanup import cleanup_lock_key

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SKUS = ["ATTA-5KG", "TOOR-1KG", "RICE-5KG", "OIL-1L", "SUGAR-1KG"]


def _dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


async def _orders_by_message(database_url: str) -> Counter[str]:
    engine = open_database(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(orders.c.source_message_id))
            return Counter(row.source_message_id for row in rows)
    finally:
        await engine.dispose()


def _flush_statistics(cluster: Cluster) -> None:
    """Have every replica write its latest counts (asking for the statistics does that)."""
    for replica in cluster.replicas:
        answer = httpx.get(
            replica.url + "/api/v1/admin/idempotency/stats",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-Proto": "https"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text


async def _last_hour(database_url: str) -> dict[str, int]:
    engine = open_database(database_url)
    try:
        figures: dict[str, int] = (await statistics.report(engine))["last_hour"]
        return figures
    finally:
        await engine.dispose()


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        whatsorder_command(*args),
        env=server_env(cluster.database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _deliver_with_duplicates(cluster: Cluster, messages: int) -> list[list[Delivery]]:
    """Each message three times: two copies at once (round robin: on two replicas), then a
    resend."""
    provider = Provider(cluster.url, cluster.certificate)
    try:

        async def one(index: int) -> list[Delivery]:
            first = provider.message(
                f"ORDER 1 x {SKUS[index % len(SKUS)]}", sender=f"whatsapp:+9180000{index:05d}"
            )
            together = await asyncio.gather(provider.deliver(first), provider.redeliver(first))
            return [*together, await provider.redeliver(first)]

        return list(await asyncio.gather(*(one(index) for index in range(messages))))
    finally:
        await provider.aclose()


def test_duplicates_through_the_proxy_take_effect_once_whichever_replica_answers(
    cluster: Cluster,
) -> None:
    messages = 30
    copies = asyncio.run(_deliver_with_duplicates(cluster, messages))

    deliveries = [delivery for group in copies for delivery in group]
    cost = Cost.of(deliveries)
    assert cost.requests == 3 * messages, cost.summary()  # nothing needed a retry
    assert not cost.failed_attempts, cost.summary() + cluster.logs()
    for group in copies:
        assert sorted(delivery.replayed for delivery in group) == [False, True, True]
        assert len({delivery.body for delivery in group}) == 1, "a replay is the first answer"
        assert b"Order ORD-" in (group[0].body or b"")

    by_message = asyncio.run(_orders_by_message(cluster.database_url))
    assert sorted(by_message) == sorted(group[0].sid for group in copies)
    assert set(by_message.values()) == {1}

    # Round robin: every replica answered a share, and the proxy's hops were all first tries.
    served = Counter(
        line.upstreams[-1] for line in cluster.nginx.access_log() if line.status == 200
    )
    for replica in cluster.replicas:
        assert served[f"127.0.0.1:{replica.port}"] >= messages // 2, served

    # Metrics, added up over the replicas, agree with the database.
    scraped = [replica.metrics() for replica in cluster.replicas]
    assert sum(metric(text, "whatsorder_orders_created_total") for text in scraped) == messages
    outcomes = {
        outcome: sum(
            metric(
                text,
                "whatsorder_idempotency_outcomes_total",
                webhook_type="twilio_inbound",
                outcome=outcome,
            )
            for text in scraped
        )
        for outcome in ("new", "replayed", "in_flight")
    }
    assert outcomes == {"new": messages, "replayed": 2 * messages, "in_flight": 0}
    webhooks = sum(
        metric(text, "whatsorder_webhook_requests_total", provider="twilio", status="200")
        for text in scraped
    )
    assert webhooks == 3 * messages

    # So do the statistics (whatsorder stats), once each replica has written its counts.
    _flush_statistics(cluster)
    stats = _cli(cluster, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    last_hour = json.loads(stats.stdout)["last_hour"]
    assert (last_hour["requests"], last_hour["new"], last_hour["replays"]) == (
        3 * messages,
        messages,
        2 * messages,
    )
    assert json.loads(stats.stdout)["records"]["total"] == messages
    audit = _cli(cluster, "audit")
    assert audit.returncode == 0, audit.stdout


def test_signatures_are_checked_against_the_public_https_url(cluster: Cluster) -> None:
    pairs = inbound_form("MENU")
    through_proxy = httpx.post(
        cluster.url + INBOUND_PATH,
        content=encode(pairs),
        headers=signed_headers(INBOUND_PATH, pairs, public_url=cluster.url),
        verify=trusting(cluster.certificate),
        timeout=10,
    )
    assert through_proxy.status_code == 200
    # Straight to a replica over plain HTTP: refused, the proxy's X-Forwarded-Proto is missing.
    direct = httpx.post(
        cluster.replicas[0].url + INBOUND_PATH,
        content=encode(pairs),
        headers=signed_headers(INBOUND_PATH, pairs, public_url=cluster.url),
        timeout=10,
    )
    assert direct.status_code == 403
    assert direct.json()["type"].endswith(":https-required")
    # Signed for the URL the replica sees (http://127.0.0.1:port), not the public one: forged.
    wrong_url = httpx.post(
        cluster.url + INBOUND_PATH,
        content=encode(pairs),
        headers=signed_headers(INBOUND_PATH, pairs, public_url=cluster.replicas[0].url),
        verify=trusting(cluster.certificate),
        timeout=10,
    )
    assert wrong_url.status_code == 403


async def _insert_expired(database_url: str, count: int) -> None:
    connection = await asyncpg.connect(_dsn(database_url))
    try:
        await connection.execute(
            """
            INSERT INTO webhook_idempotency
                (webhook_type, idempotency_key, fingerprint, status, epoch,
                 created_at, completed_at, expires_at, response_status)
            SELECT 'twilio_inbound', 'SMexpired' || n, repeat('0', 64), 'completed', 1,
                   now() - interval '2 days', now() - interval '2 days',
                   now() - interval '1 day', 200
            FROM generate_series(1, $1) AS n
            """,
            count,
        )
    finally:
        await connection.close()


async def _expired_left(database_url: str) -> int:
    connection = await asyncpg.connect(_dsn(database_url))
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM webhook_idempotency WHERE idempotency_key LIKE 'SMexpired%'"
            )
        )
    finally:
        await connection.close()


def _skips(cluster: Cluster) -> list[float]:
    return [
        metric(replica.metrics(), "whatsorder_cleanup_runs_total", outcome="skipped")
        for replica in cluster.replicas
    ]


def _expired_deleted(cluster: Cluster) -> list[float]:
    return [
        metric(replica.metrics(), "whatsorder_cleanup_rows_deleted_total", kind="expired")
        for replica in cluster.replicas
    ]


def test_cleanup_runs_on_one_replica_at_a_time(cluster: Cluster) -> None:
    """Every replica tries every second; the advisory lock lets exactly one of them clean."""
    expired = 20_000  # batches of 100: a run long enough for the others to try meanwhile

    async def hold_the_lock_until_every_replica_skipped() -> None:
        # While someone else holds the cleanup lock, every run of every replica is a skip.
        holder = await asyncpg.connect(_dsn(cluster.database_url))
        try:
            await holder.execute(
                "SELECT pg_advisory_lock($1)", cleanup_lock_key("webhook_idempotency")
            )
            await _insert_expired(cluster.database_url, expired)
            before = await asyncio.to_thread(_skips, cluster)
            deadline = time.monotonic() + 10
            while True:
                now = await asyncio.to_thread(_skips, cluster)
                if all(b > a for a, b in zip(before, now, strict=True)):
                    break
                assert time.monotonic() < deadline, f"not every replica skipped: {before} {now}"
                await asyncio.sleep(0.3)
            assert await _expired_left(cluster.database_url) == expired
        finally:
            await holder.close()  # the session ends: the lock is released

    deleted_before = _expired_deleted(cluster)
    asyncio.run(hold_the_lock_until_every_replica_skipped())
    released = datetime.now(UTC)

    deadline = time.monotonic() + 30
    while asyncio.run(_expired_left(cluster.database_url)):
        assert time.monotonic() < deadline, "cleanup did not finish in 30 s:\n" + cluster.logs()
        time.sleep(0.3)
    time.sleep(1.5)  # the run that emptied it records itself after its last batch

    # Exactly one replica deleted all of them.
    deleted = [
        after - before
        for before, after in zip(deleted_before, _expired_deleted(cluster), strict=True)
    ]
    assert sorted(deleted) == [0, 0, expired], deleted

    async def runs() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(_dsn(cluster.database_url))
        try:
            return await connection.fetch(
                "SELECT started_at, finished_at, rows_deleted, outcome"
                " FROM idempotency_cleanup_runs WHERE started_at >= $1 ORDER BY started_at",
                released - timedelta(seconds=1),
            )
        finally:
            await connection.close()

    recorded = asyncio.run(runs())
    cleaning = [run for run in recorded if run["rows_deleted"] > 0]
    assert sum(run["rows_deleted"] for run in cleaning) == expired
    assert len(cleaning) == 1, cleaning
    (run,) = cleaning
    during = [
        other
        for other in recorded
        if other["outcome"] == "skipped"
        and run["started_at"] < other["started_at"] < run["finished_at"]
    ]
    seconds = (run["finished_at"] - run["started_at"]).total_seconds()
    print(f"\ncleanup of {expired} rows on one replica: {seconds:.2f} s, {len(during)} skips in it")
    if seconds > 1.2:  # (about 2 s here) a second struck meanwhile: the others tried, and skipped
        assert during, recorded


def _restart_command(cluster: Cluster) -> str:
    """What ``systemctl restart`` does to a unit, for the test's supervised replicas: SIGTERM,
    then wait until the process has drained and exited (the supervisor starts the new one)."""
    pid_file = cluster.directory / "replica-{port}.pid"
    return (
        f'pid=$(cat "{pid_file}"); kill -TERM "$pid"; '
        'while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done'
    )


def test_rolling_upgrade_under_traffic_loses_nothing_and_doubles_nothing(
    cluster: Cluster,
) -> None:
    """deploy/rolling-restart.sh replaces the replicas one by one while a provider keeps
    delivering (and redelivering): every message takes effect once, and the only price a
    provider may see is a 503 it retries."""
    _flush_statistics(cluster)
    stats_before = asyncio.run(_last_hour(cluster.database_url))
    old_pids = [replica.pids[-1] for replica in cluster.replicas]
    roll_env = server_env(
        cluster.database_url,
        WHATSORDER_BIN=" ".join(whatsorder_command()),
        WHATSORDER_RESTART=_restart_command(cluster),
        READY_TIMEOUT="30",
        SETTLE="2",
    )

    async def upgrade_under_traffic() -> tuple[int, str, list[Delivery], float]:
        provider = Provider(cluster.url, cluster.certificate)
        stop = asyncio.Event()
        traffic = asyncio.create_task(keep_delivering(provider, stop, skus=SKUS, senders=4))
        try:
            await asyncio.sleep(0.5)  # deliveries flowing before the first replica goes
            started = time.monotonic()
            roll = await asyncio.create_subprocess_exec(
                "bash",
                str(ROLLING_RESTART),
                *(str(replica.port) for replica in cluster.replicas),
                env=roll_env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(roll.communicate(), timeout=120)
            seconds = time.monotonic() - started
            await asyncio.sleep(0.5)  # and while the last one settles in
        finally:
            stop.set()
            deliveries = await traffic
            await provider.aclose()
        assert roll.returncode is not None
        return roll.returncode, output.decode(), deliveries, seconds

    code, output, deliveries, roll_seconds = asyncio.run(upgrade_under_traffic())
    # What the provider saw, and what nginx hid from it.
    cost = Cost.of(deliveries)
    hops = [line for line in cluster.nginx.access_log() if len(line.upstreams) > 1]
    print(
        f"\nrolling upgrade of 3 replicas in {roll_seconds:.1f} s: {cost.summary()}; "
        f"nginx passed {len(hops)} requests on to another replica itself\n{output}"
    )
    assert code == 0, output + cluster.logs()
    assert "all 3 replicas replaced" in output

    # Every replica was replaced, and each old process drained and exited cleanly in time.
    for replica, old in zip(cluster.replicas, old_pids, strict=True):
        assert replica.pids[0] == old
        assert len(replica.pids) == 2, replica.pids
        (ended,) = [e for e in replica.exits if e.pid == old]
        # uvicorn re-raises the SIGTERM once it has shut down: the status systemd calls clean.
        assert ended.code in {0, -signal.SIGTERM}, ended
        assert '"Application shutdown complete."' in replica.log(generation=0)
    took = [float(seconds) for seconds in re.findall(r"restart command took ([\d.]+) s", output)]
    assert len(took) == 3, output
    assert max(took) < GRACEFUL_TIMEOUT_SECONDS + 5, output

    # At most 503s, each retried; every message delivered.
    assert cost.undelivered == 0, cost.summary() + cluster.logs()
    assert set(cost.failed_attempts) <= {"503"}, cost.summary() + cluster.logs()
    assert cost.messages >= 30, "too little traffic to say anything"

    # Each message took effect exactly once; each redelivery replayed the first answer.
    by_sid: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_sid.setdefault(delivery.sid, []).append(delivery)
    by_message = asyncio.run(_orders_by_message(cluster.database_url))
    assert {sid: by_message[sid] for sid in by_sid} == dict.fromkeys(by_sid, 1)
    redelivered = [copies for copies in by_sid.values() if len(copies) > 1]
    assert redelivered
    for first, again in redelivered:
        assert not first.replayed
        assert again.replayed
        assert again.body == first.body

    # The old processes wrote their last counts on the way out: the statistics lost nothing.
    _flush_statistics(cluster)
    stats_after = asyncio.run(_last_hour(cluster.database_url))
    assert stats_after["new"] - stats_before["new"] == len(by_sid)
    assert stats_after["replays"] - stats_before["replays"] == len(redelivered)

    # The post-deployment checks of the guide pass (the books agree among them).
    checked = subprocess.run(
        ["bash", str(CHECK), *(str(replica.port) for replica in cluster.replicas)],
        env=roll_env
        | {"WHATSORDER_PUBLIC_URL": cluster.url, "CURL_CA_BUNDLE": str(cluster.certificate)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout
    assert '"twilio":true' in checked.stdout
