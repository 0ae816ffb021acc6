"""``within``: a store step's time bound, as ``asyncio.timeout`` bounds it, at less cost."""

from __future__ import annotations

import asyncio
import time

import pytest

from whatsorder_idempotency.stores.step_timeout import within


async def test_a_step_past_its_bound_is_cancelled_as_a_timeout_and_the_task_goes_on() -> None:
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(0.05, slow())
    assert 0.04 <= time.monotonic() - started < 2
    assert cancelled.is_set()  # the step itself was stopped, not left running
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # nothing of the timer's cancellation is left over
    await asyncio.sleep(0.01)  # …and the task's next wait is not cancelled


async def test_a_step_within_its_bound_answers_and_leaves_no_timer_behind() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert await within(0.05, quick()) == 7
    assert await within(None, quick()) == 7
    await asyncio.sleep(0.1)  # past the bound: a timer left behind would cancel this wait


async def test_the_caller_s_own_cancellation_stays_a_cancellation() -> None:
    step_started = asyncio.Event()

    async def step() -> None:
        step_started.set()
        await asyncio.sleep(10)

    async def caller() -> None:
        await within(5, step())

    task = asyncio.create_task(caller())
    await step_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_arriving_with_the_timeout_is_not_swallowed() -> None:
    """The caller cancels the task just as the bound runs out: a cancellation, not a timeout."""
    step_started = asyncio.Event()

    async def step() -> None:
        step_started.set()
        await asyncio.sleep(10)

    async def caller() -> None:
        await within(0.05, step())

    task = asyncio.create_task(caller())
    await step_started.wait()
    asyncio.get_running_loop().call_later(0.05, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
