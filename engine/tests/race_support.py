"""Code the racing processes of test_process_race.py run (importable by spawned children)."""

from __future__ import annotations

import asyncio
import os
import random
from datetime import datetime, timedelta
from typing import Any

from whatsorder_idempotency import (
    HandlerResult,
    IdempotencyConfig,
    IdempotencyEngine,
    IdempotentRequest,
    StoredResponse,
    open_store,
)
from whatsorder_idempotency.record import IdempotencyRecord
from whatsorder_idempotency.stores.base import Claimed, LeaseStore


class SlowStore:
    """Injected latency: every store step waits 0–40 ms first, widening every race window."""

    def __init__(self, inner: LeaseStore) -> None:
        self.inner = inner
        self.kind = inner.kind

    async def _lag(self) -> None:
        await asyncio.sleep(random.uniform(0, 0.04))

    async def claim(
        self, request: IdempotentRequest, now: datetime, lease: timedelta, ttl: timedelta
    ) -> Claimed | IdempotencyRecord:
        await self._lag()
        return await self.inner.claim(request, now, lease, ttl)

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        await self._lag()
        return await self.inner.get(scope, key)

    async def renew(self, scope: str, key: str, epoch: int, locked_until: datetime) -> bool:
        await self._lag()
        return await self.inner.renew(scope, key, epoch, locked_until)

    async def complete(self, *args: Any) -> bool:
        await self._lag()
        return await self.inner.complete(*args)

    async def release(self, scope: str, key: str, epoch: int) -> bool:
        await self._lag()
        return await self.inner.release(scope, key, epoch)

    async def close(self) -> None:
        await self.inner.close()


def racer(url: str, key: str, effects: str, barrier: Any, results: Any) -> None:
    async def race() -> str:
        store = SlowStore(open_store(url))
        engine: IdempotencyEngine[None] = IdempotencyEngine(
            store, IdempotencyConfig(in_flight_wait=timedelta(seconds=20), ttl=timedelta(minutes=5))
        )

        async def handler() -> HandlerResult:
            # The effect a duplicate must never repeat: one line per execution.
            await asyncio.to_thread(_append_line, effects, str(os.getpid()))
            await asyncio.sleep(0.2)
            return HandlerResult(StoredResponse(201, f"made by {os.getpid()}".encode()))

        request = IdempotentRequest("race", key, "fingerprint")
        try:
            barrier.wait(timeout=30)
            result = await engine.execute_leased(request, handler)
            return f"{result.outcome.value}|{result.response.body.decode()}"
        finally:
            await store.close()

    results.put(asyncio.run(race()))


def _append_line(path: str, line: str) -> None:
    with open(path, "a") as file:
        file.write(line + "\n")
