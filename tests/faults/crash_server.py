"""``python -m crash_server serve …``: ``whatsorder serve`` whose workers SIGKILL themselves.

For the fault suite only; production code is untouched. The kill points wrap the idempotency
engine and its SQL store at the four moments of a request that matter for exactly-once:

| point           | where                                                                 |
|-----------------|-----------------------------------------------------------------------|
| before_claim    | the transaction is open, nothing written                              |
| after_claim     | the claim row inserted (and locked), no business row yet              |
| before_commit   | business rows and the completed record written, not committed         |
| after_commit    | committed, the response not yet sent                                  |

Environment (read by each worker):

- ``CRASH_POINTS``: ``point=probability`` pairs, comma-separated, e.g. ``after_claim=0.1``.
- ``CRASH_ONCE_DIR``: when set, each key is killed at most once per point (a marker file per
  key and point, created atomically), so a chosen point is hit by every request exactly once.
- ``CRASH_LOG``: each kill appends ``point key pid`` here *before* the signal, so the harness
  counts the kills actually delivered.

Workers are forked from a parent that has already imported the app (uvicorn spawns them
afresh by default, 1.7 s of CPU each here): hundreds of restarts then cost milliseconds each.
uvicorn's supervisor restarts a dead worker either way (it checks every 0.5 s).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

POINTS = ("before_claim", "after_claim", "before_commit", "after_commit")
_chance = random.SystemRandom()  # no state shared by forked workers


class KillSwitch:
    """Decides at each point whether this worker dies now."""

    def __init__(
        self, probabilities: dict[str, float], log: Path | None, once_dir: Path | None
    ) -> None:
        unknown = set(probabilities) - set(POINTS)
        if unknown:
            raise ValueError(f"unknown crash points {sorted(unknown)}; known: {POINTS}")
        self.probabilities = probabilities
        self.log = log
        self.once_dir = once_dir

    @classmethod
    def from_environment(cls) -> KillSwitch:
        pairs = [item.split("=", 1) for item in os.environ.get("CRASH_POINTS", "").split(",")]
        probabilities = {name.strip(): float(value) for name, value in pairs if name.strip()}
        log = os.environ.get("CRASH_LOG")
        once = os.environ.get("CRASH_ONCE_DIR")
        return cls(probabilities, Path(log) if log else None, Path(once) if once else None)

    def reached(self, point: str, key: str) -> None:
        probability = self.probabilities.get(point, 0.0)
        if probability <= 0 or _chance.random() >= probability:
            return
        if self.once_dir is not None:
            digest = hashlib.sha256(f"{point}\0{key}".encode()).hexdigest()[:32]
            try:
                os.close(os.open(self.once_dir / digest, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # this key already died here once
        if self.log is not None:
            line = f"{point} {key} {os.getpid()}\n".encode()
            descriptor = os.open(self.log, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
            try:
                os.write(descriptor, line)  # one small append: whole, whatever happens next
            finally:
                os.close(descriptor)
        os.kill(os.getpid(), signal.SIGKILL)


def install(switch: KillSwitch) -> None:
    """Wrap the engine and the SQL store's steps with the kill points."""
    from whatsorder_idempotency.engine import IdempotencyEngine, Outcome
    from whatsorder_idempotency.stores.sql import SqlTransaction

    insert_claim = SqlTransaction.insert_claim
    complete = SqlTransaction.complete
    execute = IdempotencyEngine.execute

    async def insert_claim_with_kills(self: SqlTransaction, request: Any, *args: Any) -> bool:
        switch.reached("before_claim", request.key)
        claimed = await insert_claim(self, request, *args)
        if claimed:
            switch.reached("after_claim", request.key)
        return claimed

    async def complete_with_kills(self: SqlTransaction, request: Any, *args: Any) -> bool:
        completed = await complete(self, request, *args)
        if completed:
            switch.reached("before_commit", request.key)
        return completed

    async def execute_with_kills(
        self: IdempotencyEngine[Any], request: Any, handler: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        result = await execute(self, request, handler)
        if result.outcome in (Outcome.NEW, Outcome.TAKEOVER):
            switch.reached("after_commit", request.key)
        return result

    SqlTransaction.insert_claim = insert_claim_with_kills  # type: ignore[method-assign]
    SqlTransaction.complete = complete_with_kills  # type: ignore[method-assign]
    IdempotencyEngine.execute = execute_with_kills  # type: ignore[method-assign]


def fork_preloaded_workers() -> None:
    """Make uvicorn fork its workers from a parent that imported the app already.

    Imported only when ``uvicorn.run`` is called: ``whatsorder serve`` sets the Prometheus
    multiprocess directory first, and prometheus_client reads it on import.
    """
    import uvicorn
    from uvicorn import _subprocess

    run = uvicorn.run

    def run_forking(*args: Any, **kwargs: Any) -> None:
        import whatsorder.web.app  # noqa: F401 (imported once, inherited by every fork)

        _subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]
        # The supervisor pings each worker in turn and waits this long for the answer; a worker
        # killed between ping and pong stalls it that long (5 s by default) before it restarts
        # anything. With hundreds of kills, 1 s keeps the run short.
        kwargs.setdefault("timeout_worker_healthcheck", 1)
        run(*args, **kwargs)

    uvicorn.run = run_forking


if __name__ == "__main__":
    from whatsorder.cli import main

    install(KillSwitch.from_environment())
    fork_preloaded_workers()
    main()
