"""``Batcher.submit_many``: consecutive submits, one parked caller.

One test (or a few) per sentence of the issue's ``submit_many`` section.
"""

from __future__ import annotations

from typing import Any

import outcome
import pytest
import trio
import trio.testing
from tutil import MarkedFailures as Process, MyError as Boom

import trio_batch as tb


class Steps(trio.abc.Instrument):
    """Counts the steps a task runs."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


POLICIES = [
    pytest.param(tb.Immediate(), id="immediate"),
    pytest.param(tb.Size(), id="size"),
    pytest.param(tb.Duration(0.5), id="duration"),
    pytest.param(tb.Duration(0.5, on_full=tb.OnFull.REJECT), id="duration-reject"),
    pytest.param(tb.Balanced(2), id="balanced"),
]


@pytest.mark.parametrize("policy", POLICIES)
async def test_same_batches_order_and_rejections_as_consecutive_submits(
    autojump_clock: trio.testing.MockClock, policy: tb.Policy
) -> None:
    limits = tb.Limits(max_batch_size=3, max_key_concurrency=1, max_batch_queue_size=2)
    process = Process()
    async with tb.open_batcher(process, policy=policy, limits=limits) as b:
        results = await b.submit_many("k", range(10), outcomes=True)
    outputs = [r.value if isinstance(r, outcome.Value) else type(r.error) for r in results]  # type: ignore[attr-defined]
    # Duration(on_full=REJECT): once the newest batch is full, every later item
    # is rejected. Otherwise the first batch (started, or full) still counts
    # toward the queue bound of 2 in this round: one more batch of 3 fits.
    rejects_when_full = isinstance(policy, tb.Duration) and policy.on_full is tb.OnFull.REJECT
    accepted = 3 if rejects_when_full else 6
    assert outputs == [f"k:{i}" for i in range(accepted)] + [tb.Rejected] * (10 - accepted)
    assert [inputs for _, inputs, _ in process.calls] == [[0, 1, 2], [3, 4, 5]][: accepted // 3]


async def test_items_join_the_batches_a_submit_would_join(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Process()
    async with tb.open_batcher(process, limits=tb.Limits(max_batch_size=2)) as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.submit, "k", "first")
            await trio.testing.wait_all_tasks_blocked()
            # "first" is processing; the items fill new batches of 2 at most.
            assert await b.submit_many("k", [1, 2, 3, 4, 5]) == [f"k:{i}" for i in range(1, 6)]
    assert [(inputs, start) for _, inputs, start in process.calls] == [
        (["first"], 0.0),
        ([1, 2], 0.0),
        ([3, 4], 0.0),
        ([5], 0.0),
    ]


async def test_results_are_in_item_order_across_keys_and_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slower_later(key: str, inputs: list[int]) -> list[int]:
        await trio.sleep(10 - inputs[0])
        return [x * 10 for x in inputs]

    async with tb.open_batcher(slower_later, limits=tb.Limits(max_batch_size=2)) as b:
        assert await b.submit_many("k", [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
        # Every item settled: returned when the slowest batch (started by 1) ended.
        assert trio.current_time() == 9.0


async def test_the_caller_parks_once(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    steps = Steps(trio.lowlevel.current_task())
    limits = tb.Limits(max_batch_size=10, max_batch_queue_size=100)
    async with tb.open_batcher(process, limits=limits) as b:
        trio.lowlevel.add_instrument(steps)
        try:
            outputs = await b.submit_many("k", range(1000))
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert outputs == [f"k:{i}" for i in range(1000)]
    # Parked once, woken once: the step that parked is the one that called.
    assert steps.steps == 1
    assert len(process.calls) == 100


async def test_first_failure_in_item_order_is_raised_after_every_item_settles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def process(key: str, inputs: list[Any]) -> list[Any]:
        # The later batch fails first.
        await trio.sleep(5 if "x" in inputs else 1)
        if "boom" in inputs:
            raise Boom("batch")
        return [outcome.Error(Boom(x)) if x == "x" else x for x in inputs]

    async with tb.open_batcher(process, limits=tb.Limits(max_batch_size=2)) as b:
        with pytest.raises(tb.ItemFailed) as caught:
            await b.submit_many("k", [1, "x", "boom", 2])
        assert trio.current_time() == 5.0
        assert b.statistics() == tb.BatcherStatistics(0, 0, 0, 0)
    assert isinstance(caught.value.__cause__, Boom)


async def test_outcomes_true_returns_every_outcome(autojump_clock: trio.testing.MockClock) -> None:
    async with tb.open_batcher(Process(), limits=tb.Limits(max_batch_size=2)) as b:
        results = await b.submit_many("k", [1, "x", "boom", 2], outcomes=True)
    assert results[0] == outcome.Value("k:1")
    assert type(results[1]) is outcome.Error
    assert type(results[1].error) is tb.ItemFailed
    assert type(results[2]) is outcome.Error
    assert type(results[2].error) is tb.BatchFailed
    assert type(results[3]) is outcome.Error
    assert type(results[3].error) is tb.BatchFailed
    assert results[2].error is not results[3].error


async def test_outcomes_true_holds_argument_and_closed_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tb.open_batcher(Process(), dedupe=lambda x: 1 // x) as b:
        results = await b.submit_many("k", [1, 0], outcomes=True)
        assert results[0] == outcome.Value("k:1")
        assert type(results[1]) is outcome.Error
        assert type(results[1].error) is ZeroDivisionError
        bad_key = await b.submit_many(["unhashable"], [1, 2], outcomes=True)
        assert all(type(r) is outcome.Error and type(r.error) is TypeError for r in bad_key)
        with pytest.raises(TypeError, match=r"^key must be hashable"):
            await b.submit_many(["unhashable"], [1])
    closed = await b.submit_many("k", [1], outcomes=True)
    assert type(closed[0]) is outcome.Error
    assert type(closed[0].error) is tb.BatcherClosed
    with pytest.raises(tb.BatcherClosed):
        await b.submit_many("k", [1])


async def test_an_empty_list_is_a_checkpoint(autojump_clock: trio.testing.MockClock) -> None:
    async with tb.open_batcher(Process()) as b:
        with trio.testing.assert_checkpoints():
            assert await b.submit_many("k", []) == []
        with trio.CancelScope() as scope:
            scope.cancel()
            await b.submit_many("k", [1])
        assert scope.cancelled_caught
        assert b.statistics().active_keys == 0


@pytest.mark.parametrize("outcomes", [False, True])
async def test_cancellation_withdraws_every_item_not_yet_processing(
    autojump_clock: trio.testing.MockClock, outcomes: bool
) -> None:
    process = Process()
    limits = tb.Limits(max_batch_size=2, max_key_concurrency=2)
    async with tb.open_batcher(process, limits=limits) as b:
        async with trio.open_nursery() as nursery:
            other: list[Any] = []

            async def neighbour() -> None:
                other.append(await b.submit("k", "neighbour"))

            nursery.start_soon(neighbour)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.5) as scope:
                # [1, 2] starts at once (the second slot); [3, 4] waits for a slot.
                await b.submit_many("k", [1, 2, 3, 4], outcomes=outcomes)
            assert scope.cancelled_caught
            assert trio.current_time() == 0.5
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics() == tb.BatcherStatistics(1, 0, 2, 0)
    # [1, 2] was processing: it carried on. [3, 4] was withdrawn.
    assert [inputs for _, inputs, _ in process.calls] == [["neighbour"], [1, 2]]
    assert other == ["k:neighbour"]


async def test_items_wait_for_room_as_submits_do(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    limits = tb.Limits(
        max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    async with tb.open_batcher(process, limits=limits) as b:
        assert await b.submit_many("k", [1, 2, 3]) == ["k:1", "k:2", "k:3"]
    assert [(inputs, start) for _, inputs, start in process.calls] == [
        ([1], 0.0),
        ([2], 1.0),
        ([3], 2.0),
    ]


async def test_cancelled_while_items_wait_for_room(autojump_clock: trio.testing.MockClock) -> None:
    process = Process()
    limits = tb.Limits(
        max_batch_size=1, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    async with tb.open_batcher(process, limits=limits) as b:
        with trio.move_on_after(0.5):
            await b.submit_many("k", [1, 2, 3])
        await trio.testing.wait_all_tasks_blocked()
        assert b.statistics() == tb.BatcherStatistics(1, 0, 1, 0)
    assert [inputs for _, inputs, _ in process.calls] == [[1]]


async def test_torn_down_items_get_batcher_closed(autojump_clock: trio.testing.MockClock) -> None:
    results: list[outcome.Outcome[Any]] = []
    async with trio.open_nursery() as nursery:
        with pytest.raises(Boom):
            async with tb.open_batcher(Process(), policy=tb.Size()) as b:

                async def many() -> None:
                    results.extend(await b.submit_many("k", [1, 2], outcomes=True))

                nursery.start_soon(many)
                await trio.testing.wait_all_tasks_blocked()
                raise Boom("body")
    assert [type(r.error) for r in results if type(r) is outcome.Error] == [tb.BatcherClosed] * 2


async def test_submit_many_from_another_run_is_refused() -> None:
    batcher: list[tb.Batcher[Any, Any, Any]] = []

    async def open_one() -> None:
        async with tb.open_batcher(Process()) as b:
            batcher.append(b)
            await trio.to_thread.run_sync(trio.run, use_it)

    async def use_it() -> None:
        with pytest.raises(RuntimeError, match=r"belongs to another Trio run"):
            await batcher[0].submit_many("k", [1])

    await open_one()


async def test_items_that_cannot_be_iterated_fail_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tb.open_batcher(Process()) as b:
        with trio.testing.assert_checkpoints(), pytest.raises(TypeError):
            await b.submit_many("k", 3)  # type: ignore[call-overload]
        assert b.statistics().active_keys == 0
