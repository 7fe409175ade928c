"""The tasks that run batches: runners shared by batches, each batch in its own context.

A batch runs in a *runner* task of the batcher's nursery. A runner runs one
batch at a time and goes straight on to the next started batch when one
finishes without blocking; a batch that blocks hands the batches still waiting
for a runner to other runners first. These tests pin what that must never
change: batches of different keys run concurrently, each batch sees a fresh
copy of the block's context, every started batch gets an outcome even if the
block is torn down before a runner took it, and idle runners do not pile up.
"""

from __future__ import annotations

import contextvars

import trio
import trio.testing
from tutil import Events, Outcomes, Recorder, harness

import trio_batch as tb
from trio_batch._runners import MAX_IDLE_RUNNERS as _MAX_IDLE_RUNNERS

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def test_batches_that_do_not_block_share_a_runner_but_not_a_context() -> None:
    seen: dict[str, str] = {}
    tasks: set[trio.lowlevel.Task] = set()

    async def process(key: str, inputs: list[int]) -> list[int]:
        # Never blocks: the runner goes straight on to the next batch.
        seen[key] = _seen.get()
        _seen.set(f"set by {key}")
        tasks.add(trio.lowlevel.current_task())
        return inputs

    keys = [f"k{i}" for i in range(20)]
    async with harness(process) as h:
        for i, key in enumerate(keys):
            h.spawn(key, i)
    assert h.outcomes.values == dict(enumerate(range(20)))
    # Twenty batches started in one tick, none blocked: one task ran them all...
    assert len(tasks) == 1
    # ...yet none saw what another batch set in its context.
    assert seen == dict.fromkeys(keys, "unset")
    assert _seen.get() == "unset"


async def test_a_blocking_batch_does_not_hold_up_the_batches_started_with_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    process = Recorder(delay=1.0)
    async with harness(process) as h:
        for i in range(50):
            h.spawn(f"k{i}", i)
    # All fifty began at 0 and ran side by side, though they started in one tick.
    assert len(h.outcomes.values) == 50
    assert {start for _, _, start in process.calls} == {0.0}
    assert set(h.outcomes.times.values()) == {1.0}
    assert process.max_running_total == 50


class _Ticks(trio.abc.Instrument):
    """Counts the iterations of Trio's run loop (each one polls for I/O once)."""

    def __init__(self) -> None:
        self.count = 0

    def before_io_wait(self, timeout: float) -> None:
        self.count += 1


async def test_when_a_batch_blocks_the_others_are_handed_over_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    ticks = _Ticks()
    began_at_tick: list[int] = []

    async def process(key: str, inputs: list[int]) -> list[int]:
        began_at_tick.append(ticks.count)
        await trio.sleep(1)
        return inputs

    trio.lowlevel.add_instrument(ticks)
    try:
        async with harness(process) as h:
            for i in range(20):
                h.spawn(f"k{i}", i)
    finally:
        trio.lowlevel.remove_instrument(ticks)
    assert len(h.outcomes.values) == 20
    # The first batch's runner sees it block and wakes a runner for each of the
    # other nineteen: they all begin one scheduler tick later, not one after another.
    first, *others = began_at_tick
    assert set(others) == {first + 1}


async def test_items_submitted_in_the_round_that_started_a_batch_join_it_whatever_the_runners(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A runner that resumes in the same scheduling round as two callers of a new
    # key, between them, must not take the batch the first caller started before
    # the second one has joined it (SPEC, per-key model).
    calls: list[tuple[str, list[int]]] = []
    gate = trio.Event()

    async def process(key: str, inputs: list[int]) -> list[int]:
        calls.append((key, list(inputs)))
        if key.startswith("slow"):
            await gate.wait()  # a runner parked inside this batch
        return inputs

    async def caller(
        batcher: tb.Batcher[str, int, int], event: trio.Event, key: str, item: int
    ) -> None:
        await event.wait()
        await batcher.submit(key, item)

    async with tb.open_batcher(process) as batcher:
        # Trio runs a round's tasks in an order it varies (reversed, or shuffled
        # under pytest-trio): repeat until the runner has surely run between them.
        for i in range(20):
            gate = trio.Event()
            first, second = trio.Event(), trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(batcher.submit, f"slow{i}", 0)
                nursery.start_soon(caller, batcher, first, f"new{i}", 1)
                nursery.start_soon(caller, batcher, second, f"new{i}", 2)
                await trio.testing.wait_all_tasks_blocked()
                # The first caller, the runner and the second caller run in the next round.
                first.set()
                gate.set()
                second.set()
    assert [sorted(inputs) for key, inputs in calls if key.startswith("new")] == [[1, 2]] * 20


async def test_idle_runners_are_capped_after_a_burst(autojump_clock: trio.abc.Clock) -> None:
    children: list[int] = []

    async def process(key: str, inputs: list[int]) -> list[int]:
        # The batcher's nursery holds its runners (no timer task with Immediate).
        nursery = trio.lowlevel.current_task().parent_nursery
        assert nursery is not None
        children.append(len(nursery.child_tasks))
        await trio.sleep(1)
        return inputs

    burst = 3 * _MAX_IDLE_RUNNERS
    async with harness(process) as h:
        for i in range(burst):
            h.spawn(f"k{i}", i)
        await h.wait_for_callers()
        # The burst needed a runner per batch; once idle, most of them exit.
        assert max(children) == burst
        await h.outcomes.submit(h.batcher, "after", "after")
    assert children[-1] == _MAX_IDLE_RUNNERS
    assert len(h.outcomes.values) == burst + 1


class _Crash(BaseException):
    """Not an Exception: it escapes ``process`` and tears the block down."""


async def test_started_batches_no_runner_took_are_closed_when_a_runner_crashes(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Three batches start in one tick and one runner takes the first. Its
    # process crashes without blocking, so that runner dies with the other two
    # batches still waiting for a runner, and no runner will ever take them.
    events = Events()
    outcomes = Outcomes()
    processed: list[str] = []

    async def process(key: str, inputs: list[str]) -> list[str]:
        processed.append(key)
        raise _Crash

    crashed = False
    try:
        async with trio.open_nursery() as callers:
            async with tb.open_batcher(process, observers=[events]) as batcher:
                # The callers live outside the block: they outlive the crash.
                for key in "xyz":
                    callers.start_soon(outcomes.submit, batcher, key, key)
                await trio.sleep_forever()
    except* _Crash:
        crashed = True
    assert crashed
    assert len(processed) == 1
    assert outcomes.values == {}
    assert sorted(outcomes.errors) == ["x", "y", "z"]
    assert all(type(error) is tb.BatcherClosed for error in outcomes.errors.values())
    # Observers see every batch start and finish, the two untaken ones included.
    assert sorted(event.key for event in events.of(tb.BatchStarted)) == ["x", "y", "z"]
    assert sorted((event.key, event.outcome) for event in events.of(tb.BatchFinished)) == [
        (key, tb.BatchOutcome.CANCELLED) for key in "xyz"
    ]


async def test_ending_a_batch_is_protected_from_keyboard_interrupt() -> None:
    # batch_finished runs while the batch is ended: after its slot is freed and
    # before (or while) its callers get their outcomes. A KeyboardInterrupt there
    # would strand them, so Trio must deliver it elsewhere.
    protected: list[bool] = []

    class Probe(tb.Observer):
        def batch_finished(self, event: tb.BatchFinished) -> None:
            protected.append(trio.lowlevel.currently_ki_protected())

    async def process(key: str, inputs: list[int]) -> list[int]:
        protected.append(trio.lowlevel.currently_ki_protected())
        return inputs

    async with tb.open_batcher(process, observers=[Probe()]) as batcher:
        assert await batcher.submit("k", 1) == 1
    # process itself is not protected; ending its batch is.
    assert protected == [False, True]
