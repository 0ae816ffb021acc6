"""Store steps bounded in time, with one timer for all of them.

Every Redis step of a replay ran under ``asyncio.timeout``: a timer of its own per step, which
with a 5 s bound means thousands of cancelled timers waiting in the event loop's heap, pushed,
popped and now and then re-sorted; that was 10% of a replay's CPU in the store (an A/B of the
same replays in one process, bench/). Here each step notes its deadline in a table, and one
timer, armed while any step runs, looks at the table a few times a second and cancels the
task of each step past its deadline. Its cancellation becomes ``TimeoutError`` when it was
this timer's and not the caller's, as ``asyncio.timeout`` does (``Task.uncancel`` keeps a
caller's own cancellation intact). A step gives up between ``seconds`` and ``seconds`` plus
one look (a tenth of ``seconds``, at most 0.1 s) after it began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

Answer = TypeVar("Answer")


class StepDeadlines:
    """The time bound of each step of one store: ``await deadlines.within(step)``."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def within(self, step: Awaitable[Answer]) -> Answer:
        """``await step``, or ``TimeoutError`` once ``seconds`` have passed (None: no bound)."""
        seconds = self.seconds
        if seconds is None:
            return await step
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None, "a store step runs in a task"
        if loop is not self._loop:  # the first step, or a store used on a new loop
            self._loop, self._deadlines, self._expired, self._timer = loop, {}, set(), None
        deadlines = self._deadlines
        outer = deadlines.get(task)  # a step inside a step keeps the nearer deadline
        deadline = loop.time() + seconds
        deadlines[task] = deadline if outer is None else min(outer, deadline)
        if self._timer is None:
            self._timer = loop.call_later(min(0.1, seconds / 10), self._look)
        try:
            return await step
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:  # ours alone: no other cancellation is pending
                    raise TimeoutError from None
            raise
        finally:
            if outer is None:
                deadlines.pop(task, None)
            else:
                deadlines[task] = outer
            if task in self._expired:  # the step ended before our cancellation reached it
                self._expired.discard(task)
                task.uncancel()

    def _look(self) -> None:
        """Cancel the steps past their deadline; look again while any step runs."""
        self._timer = None
        loop, seconds = self._loop, self.seconds
        if loop is None or seconds is None or not self._deadlines:
            return
        now = loop.time()
        for task, deadline in list(self._deadlines.items()):
            if deadline <= now and task not in self._expired and not task.done():
                self._expired.add(task)
                task.cancel()
        self._timer = loop.call_later(min(0.1, seconds / 10), self._look)
