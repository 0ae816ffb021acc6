"""First-request and replay latency of the Twilio webhook against a real `whatsorder serve`.

    .venv/bin/python bench/latency.py [--database-url URL] [--requests N]

Sequential requests from one client (latency, not throughput); prints p50/p90/p99 in ms.
Bounded: N requests of each kind, to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import (
    INBOUND_PATH,
    encode,
    inbound_form,
    running_server,
    signed_headers,
)
from whatsorder.db import migrate
from whatsorder.db.seed import seed_demo


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:6.2f} ms  p90 {q[89] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{folder}/bench.db"
        migrate.upgrade(url)
        asyncio.run(seed_demo(url))
        with (
            running_server(url, Path(folder) / "server.log") as server,
            httpx.Client(base_url=server.base_url) as client,
        ):
            forms = [
                inbound_form("ORDER 1 x SUGAR-1KG", sender=f"whatsapp:+9198{n:08d}")
                for n in range(args.requests)
            ]
            timings: dict[str, list[float]] = {"first request": [], "replay": []}
            for kind in timings:
                for pairs in forms:
                    body, headers = encode(pairs), signed_headers(INBOUND_PATH, pairs)
                    started = time.perf_counter()
                    response = client.post(INBOUND_PATH, content=body, headers=headers)
                    timings[kind].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                    replayed = response.headers.get("idempotent-replayed") == "true"
                    assert replayed == (kind == "replay")
    backend = url.split(":", 1)[0]
    for kind, samples in timings.items():
        print(f"{backend:<10} {kind:<14} n={len(samples):<5} {percentiles(samples)}")


if __name__ == "__main__":
    main()
