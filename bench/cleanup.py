"""How long cleanup takes to delete a large backlog of expired records on PostgreSQL.

    .venv/bin/python bench/cleanup.py --database-url postgresql://…/bench_cleanup \
        [--rows 1000000] [--batch-size 5000]

The database must be migrated (``whatsorder migrate``) and should be one of its own: the
benchmark adds ``--rows`` expired records (one ``INSERT … SELECT generate_series``), then times
``delete_expired`` over them and prints seconds and rows/s. Bounded: one insert, one cleanup.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sqlalchemy import text
from sqlalchemy.engine import make_url

from whatsorder.db.tables import webhook_idempotency
from whatsorder_idempotency import SqlStore, sql_engine
from whatsorder_idempotency.cleanup import delete_expired
from whatsorder_idempotency.record import utcnow

# Records as the service leaves them: a TwiML reply of ~200 bytes, expired a day ago, in the
# order they were written (expiry grows with the id).
INSERT_EXPIRED = text(
    """
    INSERT INTO webhook_idempotency (
        webhook_type, idempotency_key, fingerprint, status, epoch, response_status,
        response_body, response_headers, created_at, completed_at, expires_at
    )
    SELECT 'bench', 'SM' || md5(n::text), md5(n::text) || md5(n::text), 'completed', 1, 200,
        convert_to('<?xml version="1.0" encoding="UTF-8"?><Response><Message>' ||
                   repeat('x', 120) || '</Message></Response>', 'UTF8'),
        '[["content-type", "application/xml"]]',
        now() - interval '2 days' + n * interval '1 millisecond',
        now() - interval '2 days' + n * interval '1 millisecond',
        now() - interval '1 day' + n * interval '1 millisecond'
    FROM generate_series(1, :rows) AS n
    """
)


async def bench(url: str, rows: int, batch_size: int) -> None:
    engine = sql_engine(url)
    try:
        started = time.monotonic()
        async with engine.begin() as connection:
            await connection.execute(INSERT_EXPIRED, {"rows": rows})
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE webhook_idempotency"))
        print(f"inserted {rows:,} expired records in {time.monotonic() - started:.1f} s")

        report = await delete_expired(
            SqlStore(engine, webhook_idempotency), now=utcnow(), batch_size=batch_size
        )
        rate = report.rows_deleted / report.seconds if report.seconds else float("inf")
        print(
            f"cleanup {report.outcome}: {report.rows_deleted:,} rows in {report.batches} batches "
            f"of {batch_size:,}: {report.seconds:.2f} s, {rate:,.0f} rows/s"
        )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a migrated PostgreSQL database")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    if make_url(args.database_url).get_backend_name() != "postgresql":
        parser.error("--database-url must be a postgresql:// URL")
    asyncio.run(bench(args.database_url, args.rows, args.batch_size))


if __name__ == "__main__":
    main()
