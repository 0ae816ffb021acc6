"""``StepDeadlines``: a store step's time bound, as ``asyncio.timeout`` bounds it, at less cost."""

from __future__ import annotations

import asyncio
import time

import pytest

from whatsorder_idempotency.stores.step_timeout import StepDeadlines


async def sleeper(seconds: float, cancelled: asyncio.Event | None = None) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if cancelled is not None:
            cancelled.set()
        raise
    return "done"


async def test_a_step_past_its_bound_is_cancelled_as_a_timeout_and_the_task_goes_on() -> None:
    cancelled = asyncio.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await StepDeadlines(0.1).within(sleeper(10, cancelled))
    took = time.monotonic() - started
    assert 0.1 <= took < 1.5, took  # the bound, plus at most one look (a tenth of it)
    assert cancelled.is_set()  # the step itself was stopped, not left running
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # nothing of the timer's cancellation is left over
    await asyncio.sleep(0.01)  # …and the task's next wait is not cancelled


async def test_steps_within_their_bound_answer_and_leave_no_cancellation_behind() -> None:
    deadlines = StepDeadlines(0.05)
    assert await deadlines.within(sleeper(0)) == "done"
    assert await StepDeadlines(None).within(sleeper(0)) == "done"
    await asyncio.sleep(0.2)  # past the bound: a cancellation left behind would land here


async def test_many_steps_at_once_each_get_their_own_bound() -> None:
    deadlines = StepDeadlines(0.2)

    async def step(seconds: float) -> str:
        try:
            return await deadlines.within(sleeper(seconds))
        except TimeoutError:
            return "timed out"

    answers = await asyncio.gather(*(step(0.01 if n % 2 else 5) for n in range(20)))
    assert answers == ["timed out", "done"] * 10


async def test_the_caller_s_own_cancellation_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def step() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(StepDeadlines(5).within(step()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_arriving_with_the_timeout_is_not_swallowed() -> None:
    """The caller cancels the task in the same moment the bound runs out (one turn of the
    loop, before the task runs again): a cancellation, not a timeout."""
    deadlines = StepDeadlines(5)
    started = asyncio.Event()

    async def step() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(deadlines.within(step()))
    await started.wait()
    deadlines._deadlines[task] = 0.0  # past: the timer's next look cancels it…
    deadlines._look()  # …which it does now,
    task.cancel()  # and the caller cancels too, before the task has run
    with pytest.raises(asyncio.CancelledError):
        await task


def test_one_store_s_bound_holds_on_each_event_loop_it_is_used_on() -> None:
    """A store outlives a loop (tests, a restarted app): its timer must be the current loop's."""
    deadlines = StepDeadlines(0.1)

    async def bounded() -> None:
        with pytest.raises(TimeoutError):
            await deadlines.within(sleeper(10))

    asyncio.run(bounded())
    started = time.monotonic()
    asyncio.run(bounded())
    assert time.monotonic() - started < 2
