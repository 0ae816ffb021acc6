"""Load generators: wrk for closed-loop throughput, and a small asyncio HTTP/1.1 client for
open-loop (constant-rate) traffic and for storms of simultaneous copies.

The asyncio client writes pre-built requests on kept-alive connections and measures each
response from the moment the request was *scheduled*, not sent, so a server that stalls is
charged for every request queued behind the stall (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA = Path(__file__).with_name("orders.lua")
BODY = b'{"sku":"ATTA-5KG","qty":2}'
STORM_TIMEOUT = 60  # seconds for every copy of a storm to be answered


@dataclass
class Figures:
    """What one run measured: throughput, latency percentiles (ms) and status codes."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "statuses": self.statuses,
            "errors": self.errors,
        }


def wrk(
    base_url: str,
    *,
    mode: str,
    prefix: str = "k",
    pool: int = 1,
    seconds: float,
    connections: int = 16,
    threads: int = 1,
) -> Figures:
    """One wrk run of ``seconds`` (bounded: wrk stops itself; we wait at most 3× longer)."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        base_url + "/orders",
        "--",
        mode,
        prefix,
        str(pool),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds * 3 + 30, check=False
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("JSON:")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    data = json.loads(line.removeprefix("JSON:"))
    latency = data["latency_us"]
    errors = sum(data["errors"][kind] for kind in ("connect", "read", "write", "timeout"))
    return Figures(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        statuses=data["statuses"],
        errors=errors,
    )


# --- the asyncio client --------------------------------------------------------------------


def request_bytes(port: int, key: str | None, body: bytes = BODY) -> bytes:
    head = [
        "POST /orders HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key is not None:
        head.append(f"Idempotency-Key: {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Connection:
    """One kept-alive HTTP/1.1 connection: write a request, read its response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def receive(self) -> tuple[int, dict[str, str], bytes]:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


def figures_of(latencies: Sequence[float], statuses: Counter[str], seconds: float) -> Figures:
    ordered = sorted(latencies) or [0.0]

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return Figures(
        requests=len(latencies),
        seconds=seconds,
        p50_ms=statistics.median(ordered) * 1000,
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        max_ms=ordered[-1] * 1000,
        statuses=dict(statuses),
        errors=statuses.get("error", 0),
    )


async def constant_rate(
    port: int,
    *,
    rate: float,
    seconds: float,
    prefix: str,
    duplicate_share: float = 0.1,
    seed: int = 6,
    max_connections: int = 256,
    stop: asyncio.Event | None = None,
) -> Figures:
    """Open loop: ``rate`` requests/s for ``seconds``, ``duplicate_share`` of them re-sending
    a key sent at least a second earlier (a provider's retry). Latency from the scheduled time.
    With ``stop``, requests go on past ``seconds`` until it is set (bounded: 10× ``seconds``).
    """
    chooser = random.Random(seed)
    total = int(rate * seconds)
    idle: list[Connection] = []
    opened = 0
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    sent_keys: list[tuple[float, str]] = []
    start = time.perf_counter() + 0.2

    async def one(index: int, scheduled: float) -> None:
        nonlocal opened
        at = scheduled - start
        old = [key for moment, key in sent_keys[-2000:] if at - moment >= 1.0]
        if old and chooser.random() < duplicate_share:
            key = chooser.choice(old)
        else:
            key = f"{prefix}{index}"
            sent_keys.append((at, key))
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                if opened >= max_connections:
                    statuses["error"] += 1
                    return
                opened += 1
                connection = await Connection.open(port)
            await connection.send(request_bytes(port, key))
            status, _, _ = await connection.receive()
            latencies.append(time.perf_counter() - scheduled)
            statuses[str(status)] += 1
            idle.append(connection)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            statuses["error"] += 1
            if connection is not None:
                connection.close()

    tasks = []
    index = -1
    while True:
        index += 1
        if index >= total and (stop is None or stop.is_set() or index >= 10 * total):
            break
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    elapsed = time.perf_counter() - start
    for connection in idle:
        connection.close()
    return figures_of(latencies, statuses, elapsed)


async def storm(port: int, *, copies: int, key: str) -> tuple[Figures, float]:
    """``copies`` connections opened first, then the same request written on all at once.

    Returns the figures (latency from the moment all were written) and how long writing took.
    """
    semaphore = asyncio.Semaphore(100)  # open the connections without a SYN flood

    async def opened() -> Connection:
        async with semaphore:
            return await Connection.open(port)

    connections = await asyncio.gather(*(opened() for _ in range(copies)))
    raw = request_bytes(port, key)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def answer(connection: Connection, sent: float) -> None:
        try:
            status, _, _ = await connection.receive()
            latencies.append(time.perf_counter() - sent)
            statuses[str(status)] += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            statuses["error"] += 1
        finally:
            connection.close()

    started = time.perf_counter()
    for connection in connections:
        connection.writer.write(raw)
    await asyncio.gather(*(connection.writer.drain() for connection in connections))
    written = time.perf_counter() - started
    await asyncio.wait_for(
        asyncio.gather(*(answer(connection, started) for connection in connections)),
        STORM_TIMEOUT,
    )
    return figures_of(latencies, statuses, time.perf_counter() - started), written


async def complete_keys(port: int, keys: Sequence[str], concurrency: int = 8) -> Counter[str]:
    """Send each key once (replay scenarios need them completed first)."""
    queue = list(keys)
    statuses: Counter[str] = Counter()

    async def worker() -> None:
        connection = await Connection.open(port)
        try:
            while queue:
                key = queue.pop()
                try:
                    await connection.send(request_bytes(port, key))
                    status, _, _ = await connection.receive()
                    statuses[str(status)] += 1
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                    statuses["error"] += 1  # the layer under test broke the connection
                    connection.close()
                    connection = await Connection.open(port)
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses
