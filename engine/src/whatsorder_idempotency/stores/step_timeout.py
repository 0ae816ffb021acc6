"""One store step bounded in time, at a third of ``asyncio.timeout``'s cost.

Every Redis step of a replay ran under ``asyncio.timeout``: its context manager, state machine
and rescheduling were 8% of a replay's CPU in the store (py-spy, bench/). A step needs only
what is left once those are gone: one timer that cancels the step's task, and the
cancellation turned into ``TimeoutError`` when it was the timer's, not the caller's, as
``asyncio.timeout`` does (``Task.uncancel`` keeps a caller's own cancellation intact).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

Answer = TypeVar("Answer")


async def within(seconds: float | None, step: Awaitable[Answer]) -> Answer:
    """``await step``, or ``TimeoutError`` once ``seconds`` have passed (None: no bound)."""
    if seconds is None:
        return await step
    task = asyncio.current_task()
    assert task is not None, "a store step runs in a task"
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await step
    except asyncio.CancelledError:
        # Ours alone if no other cancellation is pending once ours is taken back.
        if expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
