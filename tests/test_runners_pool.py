"""``_runners.RunnerPool`` on its own: jobs in, jobs run; no keys, no policies."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trio
import trio.testing

from trio_batch._runners import MAX_IDLE_RUNNERS, MAX_STEP_WEIGHT, RunnerPool

seen_var: contextvars.ContextVar[str] = contextvars.ContextVar("seen_var", default="unset")


class Job:
    """A job that records which task ran it and when, and awaits ``body``."""

    def __init__(
        self, log: list[tuple[str, trio.lowlevel.Task, float]], name: str, body: Any = None
    ) -> None:
        self.log = log
        self.name = name
        self.body: Callable[[], Awaitable[None]] | None = body

    def run(self) -> Coroutine[Any, Any, None]:
        return self._run()

    weight = 1

    async def _run(self) -> None:
        self.log.append((self.name, trio.lowlevel.current_task(), trio.current_time()))
        if self.body is not None:
            await self.body()


async def test_jobs_that_never_block_run_in_order_in_one_runner() -> None:
    log: list[tuple[str, trio.lowlevel.Task, float]] = []
    async with trio.open_nursery() as nursery:
        pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
        pool.put([Job(log, str(n)) for n in range(50)])
        assert len(pool) == 50
        await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _, _ in log] == [str(n) for n in range(50)]
        assert len({task for _, task, _ in log}) == 1
        assert len(pool) == 0
        assert pool.idle_runners == 1
        pool.exit_when_idle()


async def test_a_job_put_by_another_task_does_not_begin_in_that_task_step() -> None:
    log: list[tuple[str, trio.lowlevel.Task, float]] = []
    async with trio.open_nursery() as nursery:
        pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
        pool.put([Job(log, "first")])
        await trio.testing.wait_all_tasks_blocked()
        assert pool.idle_runners == 1
        pool.put([Job(log, "second")])  # wakes the idle runner...
        assert [name for name, _, _ in log] == ["first"]  # ...which has not run yet
        await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _, _ in log] == ["first", "second"]
        pool.exit_when_idle()


async def test_a_blocking_job_hands_the_others_to_new_runners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, trio.lowlevel.Task, float]] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
        pool.put([Job(log, "blocks", release.wait), Job(log, "a"), Job(log, "b")])
        await trio.testing.wait_all_tasks_blocked()
        # The two others ran while the first is still blocked, in another task.
        assert [name for name, _, _ in log] == ["blocks", "a", "b"]
        assert log[1][1] is not log[0][1]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        pool.exit_when_idle()


async def test_every_job_runs_in_a_fresh_copy_of_the_context() -> None:
    seen: list[str] = []

    async def set_it() -> None:
        seen.append(seen_var.get())
        seen_var.set("set by a job")

    log: list[tuple[str, trio.lowlevel.Task, float]] = []
    seen_var.set("block")
    async with trio.open_nursery() as nursery:
        pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
        pool.put([Job(log, str(n), set_it) for n in range(3)])
        await trio.testing.wait_all_tasks_blocked()
        pool.exit_when_idle()
    assert seen == ["block", "block", "block"]
    assert seen_var.get() == "block"


async def test_idle_runners_are_capped(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[str, trio.lowlevel.Task, float]] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
        burst = 3 * MAX_IDLE_RUNNERS
        pool.put([Job(log, str(n), release.wait) for n in range(burst)])
        await trio.testing.wait_all_tasks_blocked()
        assert len({task for _, task, _ in log}) == burst  # one runner per blocked job
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.idle_runners == MAX_IDLE_RUNNERS
        assert len(nursery.child_tasks) == MAX_IDLE_RUNNERS
        pool.exit_when_idle()
        await trio.testing.wait_all_tasks_blocked()
        assert not nursery.child_tasks


async def test_untaken_jobs_are_handed_back_after_the_nursery_is_cancelled() -> None:
    log: list[tuple[str, trio.lowlevel.Task, float]] = []
    async with trio.open_nursery() as nursery:
        pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
        jobs = [Job(log, "a", trio.lowlevel.checkpoint), Job(log, "b")]
        pool.put(jobs)
        pool.stop()
        nursery.cancel_scope.cancel()
    # The runner took the first job, whose checkpoint raised Cancelled through
    # the runner; nobody took the second.
    assert [name for name, _, _ in log] == ["a"]
    assert pool.untaken() == jobs[1:]
    assert len(pool) == 0


async def test_a_job_that_raises_takes_its_runner_down_with_it() -> None:
    # Jobs handle their own exceptions; one that does not is a crash of the
    # pool's nursery, as with any task (the batcher's jobs never raise Exceptions).
    log: list[tuple[str, trio.lowlevel.Task, float]] = []

    async def boom() -> None:
        raise KeyError("boom")

    with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="boom")):
        async with trio.open_nursery() as nursery:
            pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
            pool.put([Job(log, "raises", boom), Job(log, "after")])
            await trio.testing.wait_all_tasks_blocked()
    assert [name for name, _, _ in log] == ["raises"]
    assert len(pool) == 1


async def test_a_step_runs_at_most_max_step_weight_before_yielding() -> None:
    # Non-blocking jobs do not hold the scheduler for ever: after jobs weighing
    # MAX_STEP_WEIGHT, the runner yields once (and stays the only runner).
    log: list[tuple[str, trio.lowlevel.Task, float]] = []
    steps: list[int] = []

    class CountSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name == "runner":
                steps.append(len(log))

    jobs = 3 * MAX_STEP_WEIGHT + 1
    trio.lowlevel.add_instrument(CountSteps())
    async with trio.open_nursery() as nursery:
        pool = RunnerPool(nursery, contextvars.copy_context(), "runner")
        pool.put([Job(log, str(n)) for n in range(jobs)])
        await trio.testing.wait_all_tasks_blocked()
        pool.exit_when_idle()
    assert [name for name, _, _ in log] == [str(n) for n in range(jobs)]
    assert len({task for _, task, _ in log}) == 1
    # Steps began after 0, 256, 512 and 768 jobs (then one to exit).
    assert steps[:4] == [0, MAX_STEP_WEIGHT, 2 * MAX_STEP_WEIGHT, 3 * MAX_STEP_WEIGHT]
