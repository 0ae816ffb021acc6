"""A job run on a cron schedule in the background of the service, until stopped: the cleanup
(`whatsorder.scheduler`) and the reconciliation sweep (`whatsorder.reconciliation`).

A run that fails is logged and the schedule goes on, after a pause (never a tight loop of
failures). ``clock`` and ``poll_seconds`` exist for tests: waiting rechecks the clock at least
every ``poll_seconds``, so a fast clock runs an every-minute schedule in milliseconds (and a
clock that jumps is noticed within a poll).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from cronsim import CronSim, CronSimError

from whatsorder.clock import as_utc, utcnow

log = logging.getLogger(__name__)

NextRun = Callable[[datetime], datetime]
Clock = Callable[[], datetime]


def cron_schedule(expression: str) -> NextRun:
    """The first time after a moment that ``expression`` names (5 fields, or 6 with seconds).

    Raises ``ValueError`` at once for an expression that is invalid or never due.
    """

    def next_run(after: datetime) -> datetime:
        try:
            due = next(CronSim(expression, as_utc(after)), None)
        except CronSimError as error:
            raise ValueError(f"{expression!r} is not a valid cron expression: {error}") from error
        if due is None:
            raise ValueError(f"{expression!r} is never due")
        return due

    next_run(utcnow())
    return next_run


class ScheduledJob:
    """Runs `run_once` whenever ``next_run`` says. Subclasses say what a run is, and what a
    failed one logs (`log_failure`)."""

    name = "whatsorder-job"

    def __init__(
        self,
        next_run: NextRun,
        *,
        clock: Clock = utcnow,
        poll_seconds: float = 60.0,
        stop_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self._next_run = next_run
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._stop_timeout = stop_timeout.total_seconds()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> None:
        raise NotImplementedError

    def log_failure(self, error: Exception) -> None:
        log.error("Scheduled job failed", exc_info=True, extra={"job": self.name})

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run_on_schedule(), name=self.name
            )

    async def stop(self) -> None:
        """Stop after the step in progress; past ``stop_timeout`` cancel the run."""
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, timeout=self._stop_timeout)
        except TimeoutError:
            log.warning("Scheduled job cancelled at shutdown", extra={"job": self.name})

    async def _run_on_schedule(self) -> None:
        while not self._stop.is_set():
            try:
                due = self._next_run(self._clock())
                if not await self._wait_until(due):
                    return
                await self.run_once()
            except Exception as error:
                self.log_failure(error)
                await self._pause(self._poll_seconds)  # never a tight loop of failures

    async def _wait_until(self, due: datetime) -> bool:
        """Sleep until ``due`` by the clock; ``False`` if stopped first."""
        while (remaining := (due - self._clock()).total_seconds()) > 0:
            if await self._pause(min(remaining, self._poll_seconds)):
                return False
        return not self._stop.is_set()

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` if stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True
