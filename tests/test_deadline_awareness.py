"""Duration(..., deadline_margin=...): callers' deadlines shorten a batch's wait."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from tutil import Recorder

import trio_batch as tb


def test_deadline_margin_validation() -> None:
    # Opt-in: a plain Duration keeps the spec's meaning (the timer is the delay).
    assert tb.Duration(1.0).deadline_margin is None
    assert tb.Duration(1.0, deadline_margin=0.0).deadline_margin == 0.0
    with pytest.raises(ValueError, match=r"^deadline_margin must be >= 0, got -0.1"):
        tb.Duration(1.0, deadline_margin=-0.1)
    with pytest.raises(ValueError, match=r"^deadline_margin must be >= 0"):
        tb.Duration(1.0, deadline_margin=math.nan)


async def test_caller_deadline_starts_batch_early(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=0.25)
    policy = tb.Duration(10.0, deadline_margin=0.5)
    got: list[str] = []
    async with tb.open_batcher(process, policy=policy) as b:

        async def patient(item: int) -> None:
            got.append(await b.submit("k", item))

        async def hurried(item: int) -> None:
            # Deadline t=4: the batch must start by 4 - 0.5 (margin), less the
            # measured batch time, which is 0 before any batch has finished.
            with trio.fail_after(3.0):
                got.append(await b.submit("k", item))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patient, 0)
            await trio.sleep(1.0)
            nursery.start_soon(hurried, 1)
            await trio.sleep(1.0)
            nursery.start_soon(patient, 2)
    # The whole batch went early for the hurried caller, who made its deadline.
    assert process.calls == [("k", [0, 1, 2], 3.5)]
    assert sorted(got) == ["k:0", "k:1", "k:2"]


async def test_measured_batch_time_is_subtracted(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []
    durations = iter([1.0, 1.0, 2.0, 1.0])

    async def process(key: str, inputs: list[int]) -> list[int]:
        calls.append(trio.current_time())
        await trio.sleep(next(durations))
        return inputs

    policy = tb.Duration(10.0, deadline_margin=0.1)
    async with tb.open_batcher(process, policy=policy) as b:
        await b.submit("k", 0)  # starts at 10, takes 1 s: the average is seeded with 1.0
        with trio.fail_after(3.0):  # deadline 14: start by 14 - 0.1 - 1.0 = 12.9
            await b.submit("k", 1)
        await b.submit("k", 2)  # starts at 13.9 + 10, takes 2 s: average 1.0 + 0.2 * 1.0
        assert trio.current_time() == pytest.approx(25.9)
        with trio.fail_after(5.0):  # deadline 30.9: start by 30.9 - 0.1 - 1.2 = 29.6
            await b.submit("k", 3)
    assert calls == pytest.approx([10.0, 12.9, 23.9, 29.6])


async def test_deadline_later_than_timer_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with tb.open_batcher(process, policy=tb.Duration(2.0)) as b:
        with trio.fail_after(100):
            await b.submit("k", 0)
    assert process.calls == [("k", [0], 2.0)]


@pytest.mark.parametrize("policy", [tb.Duration(2.0), tb.Duration(2.0, deadline_margin=None)])
async def test_deadlines_ignored_by_default_and_when_margin_is_none(
    autojump_clock: trio.testing.MockClock, policy: tb.Duration
) -> None:
    process = Recorder()
    async with tb.open_batcher(process, policy=policy) as b:
        with trio.move_on_after(1.0):
            await b.submit("k", 0)
        # The caller timed out and withdrew: nothing was processed.
        assert b.statistics() == tb.BatcherStatistics(0, 0, 0, 0)
        await b.submit("k", 1)
    assert process.calls == [("k", [1], 3.0)]


async def test_withdrawn_hurried_caller_does_not_move_timer_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Documented rule: a batch's timer only moves earlier.
    process = Recorder()
    policy = tb.Duration(10.0, deadline_margin=1.0)
    async with tb.open_batcher(process, policy=policy) as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.submit, "k", 0)
            await trio.testing.wait_all_tasks_blocked()
            scope = trio.CancelScope(deadline=trio.current_time() + 4.0)

            async def hurried() -> None:
                with scope:
                    await b.submit("k", 1)

            nursery.start_soon(hurried)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # withdraws at t=0; the batch still starts at 4 - 1 = 3
    assert process.calls == [("k", [0], 3.0)]


async def test_deadline_in_the_past_starts_at_once(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder()
    policy = tb.Duration(5.0, deadline_margin=2.0)
    async with tb.open_batcher(process, policy=policy) as b:
        with trio.fail_after(1.0):  # deadline 1 - margin 2 < now: start immediately
            await b.submit("k", 0)
    assert process.calls == [("k", [0], 0.0)]


async def test_deadline_awareness_with_infinite_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    policy = tb.Duration(math.inf, deadline_margin=0.5)
    async with tb.open_batcher(process, policy=policy) as b:
        with trio.fail_after(2.0):
            await b.submit("k", 0)
    assert process.calls == [("k", [0], 1.5)]
