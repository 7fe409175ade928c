"""The private Trio hooks the simulator relies on for deterministic scheduling.

``trio_batch.sim`` makes a run's numbers reproducible by switching on the
scheduling that Trio provides for Hypothesis: it sets
``trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING`` and seeds
``trio._core._run._r`` for the duration of each ``trio.run``, then restores
both. If a future Trio moves or changes them, the simulator quietly runs
without the guarantee; these tests fail loudly instead.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
import trio.testing

#: Tasks made runnable together in each run.
TASKS = 8


def run_module() -> Any:
    return sys.modules["trio._core._run"]


@contextmanager
def deterministic_scheduling(seed: str, *, enable: bool = True) -> Iterator[None]:
    """Set the flag and seed the scheduler's generator as the simulator does; restore both."""
    module = run_module()
    saved_flag = module._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = module._r.getstate()
    module._ALLOW_DETERMINISTIC_SCHEDULING = enable
    module._r.seed(seed)
    try:
        yield
    finally:
        module._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag
        module._r.setstate(saved_state)


def run_order(wake_order: list[int]) -> list[int]:
    """Park ``TASKS`` tasks, wake them all in one go in ``wake_order``; the order they ran in."""

    async def main() -> list[int]:
        ran: list[int] = []
        tasks: dict[int, trio.lowlevel.Task] = {}

        async def worker(i: int) -> None:
            tasks[i] = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
            ran.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(TASKS):
                nursery.start_soon(worker, i)
            await trio.testing.wait_all_tasks_blocked()
            for i in wake_order:  # no checkpoint: they become runnable together
                trio.lowlevel.reschedule(tasks[i])
        return ran

    return trio.run(main)


FORWARD = list(range(TASKS))
BACKWARD = FORWARD[::-1]


def test_the_hooks_exist_with_the_expected_types() -> None:
    module = run_module()
    assert type(module._ALLOW_DETERMINISTIC_SCHEDULING) is bool
    # Trio's scheduling loop reads both globals. (Checked in its code: pytest-trio
    # sets the flag itself, so the attribute would exist even if Trio dropped it.)
    globals_read = module.unrolled_run.__code__.co_names
    assert "_ALLOW_DETERMINISTIC_SCHEDULING" in globals_read
    assert "_r" in globals_read
    assert isinstance(module._r, random.Random)


def test_with_the_hooks_the_order_is_a_function_of_the_seed_alone() -> None:
    with deterministic_scheduling("seed-1"):
        first = run_order(FORWARD)
    # The same seed gives the same order, whatever order the tasks were woken in
    # (the flag sorts the runnable tasks by creation before shuffling them).
    with deterministic_scheduling("seed-1"):
        assert run_order(FORWARD) == first
    with deterministic_scheduling("seed-1"):
        assert run_order(BACKWARD) == first
    assert sorted(first) == FORWARD
    # The order still depends on the seed: it is shuffled, not fixed.
    orders = set()
    for n in range(5):
        with deterministic_scheduling(f"seed-{n}"):
            orders.add(tuple(run_order(FORWARD)))
    assert len(orders) > 1


def test_without_the_flag_a_seed_alone_does_not_fix_the_order() -> None:
    # The control: with only ``_r`` seeded, the order follows the wake-up order,
    # so the flag is what makes the simulator's runs reproducible.
    with deterministic_scheduling("seed-1", enable=False):
        forward = run_order(FORWARD)
    with deterministic_scheduling("seed-1", enable=False):
        backward = run_order(BACKWARD)
    assert forward != backward
    assert sorted(forward) == sorted(backward) == FORWARD


def test_toggling_restores_the_flag_and_the_generator() -> None:
    module = run_module()
    flag = module._ALLOW_DETERMINISTIC_SCHEDULING
    state = module._r.getstate()
    with deterministic_scheduling("seed-1"):
        assert module._ALLOW_DETERMINISTIC_SCHEDULING is True
        run_order(FORWARD)
    assert module._ALLOW_DETERMINISTIC_SCHEDULING is flag
    assert module._r.getstate() == state
