"""Batches bounded by cost (issue 14): one test, or more, for every sentence of the issue.

Items here are ``(name, cost)`` pairs and ``cost=item_cost`` reads the second
half, so every test shows the costs it uses. Virtual time throughout.
"""

from __future__ import annotations

import decimal
import fractions
import math
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from tutil import ALL_POLICIES, Events, MyError, Outcomes, Recorder, submit_in_order

import trio_batch as tb

Item = tuple[str, float]


def item_cost(item: Item) -> float:
    return item[1]


def names(calls: list[list[Item]]) -> list[list[str]]:
    return [[name for name, _ in inputs] for inputs in calls]


def zero_stats(queued_cost: float = 0) -> tb.BatcherStatistics:
    return tb.BatcherStatistics(0, 0, 0, 0, queued_cost)


BOUND10 = tb.Limits(max_batch_size=64, max_key_concurrency=1, max_batch_cost=10)


# --- cost(item): called once, in submit, in the caller's task, before queueing ---


async def test_cost_is_called_once_per_item_in_the_callers_task_before_queueing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, trio.lowlevel.Task, int]] = []
    callers: dict[str, trio.lowlevel.Task] = {}
    batcher: tb.Batcher[str, Item, str]

    def cost(item: Item) -> float:
        # Queued items when the cost is asked: the item is not queued yet.
        seen.append((item[0], trio.lowlevel.current_task(), batcher.statistics().queued_items))
        return item[1]

    process = Recorder(delay=1.0)

    async def caller(item: Item) -> None:
        callers[item[0]] = trio.lowlevel.current_task()
        assert await batcher.submit("k", item) == f"k:{item}"

    limits = tb.Limits(
        max_batch_size=2, max_key_concurrency=1, max_batch_queue_size=1, overflow=tb.Overflow.WAIT
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=cost) as batcher:
            for item in [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]:
                nursery.start_soon(caller, item)
                await trio.testing.wait_all_tasks_blocked()
    # Once per item, even for those that waited for room and were admitted later.
    assert [name for name, _, _ in seen] == ["a", "b", "c", "d", "e"]
    assert all(task is callers[name] for name, task, _ in seen)
    assert [queued for _, _, queued in seen] == [0, 1, 0, 1, 2]
    assert names(process.inputs()) == [["a", "b"], ["c", "d"], ["e"]]


@pytest.mark.parametrize("value", [0, 1, 2.5, 0.0, 10, np.float64(2.5), np.int64(3)])
async def test_cost_may_be_any_finite_int_or_float_at_least_0(
    autojump_clock: trio.testing.MockClock, value: Any
) -> None:
    process = Recorder()
    events = Events()
    async with tb.open_batcher(
        process, cost=lambda _: value, limits=BOUND10, observers=[events]
    ) as batcher:
        assert await batcher.submit("k", "x") == "k:x"
    (started,) = events.of(tb.BatchStarted)
    assert started.cost == value
    assert type(started.cost) in (int, float)  # numpy numbers are read as plain ones


@pytest.mark.parametrize("policy", ALL_POLICIES)
async def test_cost_that_raises_fails_only_its_caller_with_the_same_exception(
    autojump_clock: trio.testing.MockClock, policy: Any
) -> None:
    error = MyError("no tokenizer for this prompt")

    def cost(item: Item) -> float:
        if item[0] == "bad":
            raise error
        return item[1]

    process = Recorder()
    async with tb.open_batcher(process, policy=policy, limits=BOUND10, cost=cost) as batcher:
        with pytest.raises(MyError) as caught:
            await batcher.submit("k", ("bad", 1))
        assert caught.value is error  # the same exception, unchanged
        assert batcher.statistics() == zero_stats()  # nothing queued, no key kept
        # The batcher goes on.
        async with trio.open_nursery() as nursery:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, batcher, "k", [("a", 4), ("b", 6)])
    assert outcomes.values == {("a", 4): "k:('a', 4)", ("b", 6): "k:('b', 6)"}
    assert names(process.inputs()) == [["a", "b"]] or names(process.inputs()) == [["a"], ["b"]]
    assert "bad" not in [name for name, _ in process.processed()]


async def test_cost_that_raises_is_a_checkpoint_and_leaves_waiters_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def cost(item: Item) -> float:
        if item[0] == "bad":
            raise MyError("bad")
        return item[1]

    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_key_concurrency=1,
        max_batch_queue_size=1,
        max_batch_cost=10,
        overflow=tb.Overflow.WAIT,
    )
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=cost) as batcher:
            # x fills a batch and runs; a waits in the queue; b waits for room.
            await submit_in_order(nursery, outcomes, batcher, "k", [("x", 10), ("a", 5), ("b", 6)])
            before = batcher.statistics()
            assert before.waiting_submits == 1
            with trio.testing.assert_checkpoints(), pytest.raises(MyError):
                await batcher.submit("k", ("bad", 1))
            assert batcher.statistics() == before
    assert names(process.inputs()) == [["x"], ["a"], ["b"]]
    assert len(outcomes.values) == 3


@pytest.mark.parametrize(
    ("value", "error", "shown"),
    [
        (-1, ValueError, "-1"),
        (-0.5, ValueError, "-0.5"),
        (math.nan, ValueError, "nan"),
        (math.inf, ValueError, "inf"),
        (-math.inf, ValueError, "-inf"),
        (np.float64("nan"), ValueError, "nan"),
        (True, TypeError, "True"),
        (False, TypeError, "False"),
        (None, TypeError, "None"),
        ("3", TypeError, "'3'"),
        (b"3", TypeError, "b'3'"),
        ([3], TypeError, r"\[3\]"),
        (decimal.Decimal(3), TypeError, r"Decimal\('3'\)"),
        (1 + 2j, TypeError, r"\(1\+2j\)"),
        (np.bool_(True), TypeError, r"(np\.)?True_?"),
    ],
)
async def test_invalid_cost_fails_its_caller_naming_the_batcher_and_the_value(
    autojump_clock: trio.testing.MockClock, value: object, error: type[Exception], shown: str
) -> None:
    process = Recorder()

    def cost(item: str) -> Any:
        return value if item == "bad" else 1

    async with tb.open_batcher(process, cost=cost, name="tokens") as batcher:
        with pytest.raises(error, match=rf"^batcher 'tokens': cost\(item\).* {shown}"):
            await batcher.submit("k", "bad")
        assert batcher.statistics() == zero_stats()
        assert await batcher.submit("k", "good") == "k:good"  # it goes on
    assert process.processed() == ["good"]


@pytest.mark.parametrize(
    ("value", "read_as"), [(fractions.Fraction(1, 4), 0.25), (np.float32(0.5), 0.5)]
)
async def test_other_real_numbers_are_read_as_plain_ones(
    autojump_clock: trio.testing.MockClock, value: Any, read_as: float
) -> None:
    # Not an int or a float, but a real number (numbers.Real): read as a
    # float, so costs computed with numpy or fractions work.
    events = Events()
    async with tb.open_batcher(Recorder(), cost=lambda _: value, observers=[events]) as batcher:
        await batcher.submit("k", 1)
    cost = events.of(tb.BatchStarted)[0].cost
    assert cost == read_as
    assert type(cost) is float


# --- Limits(max_batch_cost=...) and open_batcher ---------------------------------


async def test_max_batch_cost_without_cost_is_a_value_error_from_open_batcher() -> None:
    process = Recorder()
    with pytest.raises(ValueError, match=r"^max_batch_cost=4096 needs a cost function"):
        async with tb.open_batcher(process, limits=tb.Limits(max_batch_cost=4096)):
            pass  # pragma: no cover


async def test_cost_must_be_callable() -> None:
    process = Recorder()
    with pytest.raises(TypeError, match=r"^cost must be None or a callable"):
        async with tb.open_batcher(process, cost=3):  # type: ignore[call-overload]
            pass  # pragma: no cover


async def test_cost_without_max_batch_cost_only_reports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    events = Events()
    limits = tb.Limits(max_batch_size=3, max_key_concurrency=1)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Size(), limits=limits, cost=item_cost, observers=[events]
        ) as batcher:
            outcomes = Outcomes()
            items = [("a", 1000), ("b", 2000.5), ("c", 3000), ("d", 7)]
            await submit_in_order(nursery, outcomes, batcher, "k", items)
            # Counted only by number: [a, b, c] is full and runs, d waits.
            assert batcher.statistics() == tb.BatcherStatistics(1, 1, 1, 0, 7)
    assert names(process.inputs()) == [["a", "b", "c"], ["d"]]
    assert [e.cost for e in events.of(tb.BatchStarted)] == [6000.5, 7]
    assert [e.cost for e in events.of(tb.BatchFinished)] == [6000.5, 7]


async def test_max_batch_cost_none_is_unbounded_and_is_the_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Size(), limits=tb.Limits(max_batch_size=2), cost=item_cost
        ) as batcher:
            await submit_in_order(nursery, Outcomes(), batcher, "k", [("a", 1e300), ("b", 1e300)])
    assert names(process.inputs()) == [["a", "b"]]


# --- Oversize ------------------------------------------------------------------


@pytest.mark.parametrize("overflow", list(tb.Overflow))
async def test_oversize_reject_raises_rejected_at_once_naming_cost_and_limit(
    autojump_clock: trio.testing.MockClock, overflow: tb.Overflow
) -> None:
    process = Recorder(delay=1.0)
    events = Events()
    limits = tb.Limits(
        max_key_concurrency=1, max_batch_queue_size=1, max_batch_cost=10, overflow=overflow
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Size(), limits=limits, cost=item_cost, observers=[events]
        ) as batcher:
            outcomes = Outcomes()
            # a (7) waits in the queue, not full.
            await submit_in_order(nursery, outcomes, batcher, "k", [("a", 7)])
            before = batcher.statistics()
            start = trio.current_time()
            with pytest.raises(tb.Rejected, match=r"costs 12, more than max_batch_cost=10"):
                await batcher.submit("k", ("big", 12))
            assert trio.current_time() == start  # at once, even with Overflow.WAIT
            assert batcher.statistics() == before  # nothing queued
            # It changed nothing: a still takes an item that fits.
            await submit_in_order(nursery, outcomes, batcher, "k", [("b", 3)])
    assert names(process.inputs()) == [["a", "b"]]
    assert len(events.of(tb.ItemRejected)) == 1
    assert len(events.of(tb.ItemAccepted)) == 2


async def test_oversize_reject_is_the_default() -> None:
    assert tb.Limits(max_batch_cost=1).oversize is tb.Oversize.REJECT


async def test_oversize_alone_gets_a_batch_of_its_own_that_counts_as_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(max_key_concurrency=1, max_batch_cost=10, oversize=tb.Oversize.ALONE)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", [("a", 2), ("big", 12), ("z", 0)])
            # a's batch was closed by big (it did not fit) and runs; big's batch
            # is full (Size starts it as soon as the slot frees), and z, cost 0,
            # does not join it.
            await trio.sleep(1.5)
            assert names(process.inputs()) == [["a"], ["big"]]
    assert names(process.inputs()) == [["a"], ["big"], ["z"]]
    assert [t for _, _, t in process.calls] == [0.0, 1.0, 2.0]
    assert outcomes.values[("big", 12)] == "k:('big', 12)"


@pytest.mark.parametrize("overflow", list(tb.Overflow))
async def test_oversize_alone_is_subject_to_max_batch_queue_size(
    autojump_clock: trio.testing.MockClock, overflow: tb.Overflow
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_key_concurrency=1,
        max_batch_queue_size=1,
        max_batch_cost=10,
        oversize=tb.Oversize.ALONE,
        overflow=overflow,
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            # x runs; a waits in the queue (of one batch): big needs a new batch.
            await submit_in_order(nursery, outcomes, b, "k", [("x", 10), ("a", 1), ("big", 50)])
    if overflow is tb.Overflow.REJECT:
        assert outcomes.error_types() == {("big", 50): tb.Rejected}
        assert "max_batch_queue_size=1" in str(outcomes.errors[("big", 50)])
        assert names(process.inputs()) == [["x"], ["a"]]
    else:
        assert outcomes.errors == {}
        assert names(process.inputs()) == [["x"], ["a"], ["big"]]


# --- Joining: by count and by cost, newest batch only ------------------------------


async def test_an_item_joins_the_newest_batch_only_if_it_fits_by_count_and_by_cost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    limits = tb.Limits(max_batch_size=3, max_batch_cost=10)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            items = [
                ("a", 4),
                ("b", 3),
                ("c", 5),  # 7 + 5 > 10: a new batch
                ("d", 2),
                ("e", 1),  # 8: fits by cost
                ("f", 1),  # 9 would fit by cost, but [c, d, e] has 3 items
                ("g", 9.5),  # 1 + 9.5 > 10
            ]
            await submit_in_order(nursery, Outcomes(), b, "k", items)
    assert names(process.inputs()) == [["a", "b"], ["c", "d", "e"], ["f"], ["g"]]


async def test_items_never_join_an_older_batch(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=BOUND10, cost=item_cost) as b:
            outcomes = Outcomes()
            # x runs; [a, b] (7) is closed by c and waits for the slot; d would
            # fit in [a, b] but joins the newest batch, [c].
            items = [("x", 10), ("a", 4), ("b", 3), ("c", 5), ("d", 1)]
            await submit_in_order(nursery, outcomes, b, "k", items)
            assert b.statistics().queued_cost == 13
    assert names(process.inputs()) == [["x"], ["a", "b"], ["c", "d"]]


@pytest.mark.parametrize("overflow", list(tb.Overflow))
async def test_an_item_that_does_not_fit_needs_a_new_batch_as_today(
    autojump_clock: trio.testing.MockClock, overflow: tb.Overflow
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_key_concurrency=1, max_batch_queue_size=1, max_batch_cost=10, overflow=overflow
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", [("x", 10), ("a", 6), ("c", 5)])
            if overflow is tb.Overflow.WAIT:
                assert b.statistics().waiting_submits == 1
    if overflow is tb.Overflow.REJECT:
        assert outcomes.error_types() == {("c", 5): tb.Rejected}
        assert names(process.inputs()) == [["x"], ["a"]]
    else:
        assert names(process.inputs()) == [["x"], ["a"], ["c"]]


# --- "Full" ------------------------------------------------------------------------


async def test_a_batch_whose_cost_equals_the_bound_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=BOUND10, cost=item_cost) as b:
            await submit_in_order(nursery, Outcomes(), b, "k", [("a", 2.5), ("b", 7.5)])
            # Size starts it at once: it is full by cost.
            assert names(process.inputs()) == [["a", "b"]]
            assert process.calls[0][2] == 0.0


async def test_float_costs_are_added_as_they_come(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 0.1 + 0.2 > 0.3 in binary floating point: b does not fit with a (it
    # closes [a], which starts), and c, cost 0, joins [b].
    process = Recorder()
    limits = tb.Limits(max_batch_cost=0.3)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            await submit_in_order(nursery, Outcomes(), b, "k", [("a", 0.1), ("b", 0.2), ("c", 0)])
    assert names(process.inputs()) == [["a"], ["b", "c"]]


async def test_a_batch_at_the_bound_takes_no_further_item_not_even_cost_0(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Immediate(), limits=BOUND10, cost=item_cost
        ) as b:
            # x runs; [a, b] reaches 10 while it waits for the slot; z costs 0.
            items = [("x", 1), ("a", 4), ("b", 6), ("z", 0), ("y", 0)]
            await submit_in_order(nursery, Outcomes(), b, "k", items)
    assert names(process.inputs()) == [["x"], ["a", "b"], ["z", "y"]]


@pytest.mark.parametrize("overflow", list(tb.Overflow))
async def test_an_item_that_does_not_fit_closes_the_batch_a_rejected_one_does_not(
    autojump_clock: trio.testing.MockClock, overflow: tb.Overflow
) -> None:
    # One queued batch at most; Size starts a batch only when it is full.
    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_key_concurrency=1, max_batch_queue_size=1, max_batch_cost=10, overflow=overflow
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", [("a", 4), ("b", 3)])
            assert process.calls == []  # [a, b] (7) is not full
            await submit_in_order(nursery, outcomes, b, "k", [("c", 5)])
            if overflow is tb.Overflow.WAIT:
                # c goes on to wait for room: it closed [a, b], which starts now.
                assert names(process.inputs()) == [["a", "b"]]
            else:
                # c is rejected: that changes nothing, [a, b] still waits, and
                # still takes an item that fits.
                assert outcomes.error_types() == {("c", 5): tb.Rejected}
                assert process.calls == []
                await submit_in_order(nursery, outcomes, b, "k", [("d", 3)])
                assert names(process.inputs()) == [["a", "b", "d"]]
            assert process.calls[0][2] == 0.0
    if overflow is tb.Overflow.WAIT:
        assert names(process.inputs()) == [["a", "b"], ["c"]]


async def test_an_item_that_opens_a_new_batch_closes_the_one_it_did_not_fit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=BOUND10, cost=item_cost) as b:
            await submit_in_order(nursery, Outcomes(), b, "k", [("a", 4), ("b", 3), ("c", 5)])
            # [a, b] is full now (c closed it) and starts; [c] is not and waits.
            assert names(process.inputs()) == [["a", "b"]]
            await trio.sleep(5)
            assert names(process.inputs()) == [["a", "b"]]
    assert names(process.inputs()) == [["a", "b"], ["c"]]  # flushed by the drain


async def test_size_starts_a_batch_closed_by_cost_when_a_slot_frees(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Readiness on finish: Size starts the oldest queued batch only if full,
    # and a batch closed by an item that did not fit is full.
    process = Recorder(delay=1.0)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=BOUND10, cost=item_cost) as b:
            items = [("x", 10), ("a", 6), ("b", 5), ("c", 5)]
            await submit_in_order(nursery, Outcomes(), b, "k", items)
            await trio.sleep(10)
            assert [(names([i])[0], t) for _, i, t in process.calls] == [
                (["x"], 0.0),
                (["a"], 1.0),
                (["b", "c"], 2.0),
            ]


async def test_duration_process_starts_a_batch_full_by_cost_before_its_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Duration(5.0), limits=BOUND10, cost=item_cost
        ) as b:
            await submit_in_order(nursery, Outcomes(), b, "k", [("a", 4), ("b", 6), ("c", 1)])
            await trio.sleep(10)
    assert [(names([i])[0], t) for _, i, t in process.calls] == [(["a", "b"], 0.0), (["c"], 5.0)]


async def test_duration_reject_rejects_an_item_that_needs_a_new_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # OnFull.REJECT: a full batch still waits for its timer, and an item that
    # would need a new batch meanwhile is rejected (full by cost too).
    process = Recorder()
    policy = tb.Duration(5.0, on_full=tb.OnFull.REJECT)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=policy, limits=BOUND10, cost=item_cost) as b:
            outcomes = Outcomes()
            items = [("a", 4), ("b", 6), ("z", 0), ("c", 3)]
            await submit_in_order(nursery, outcomes, b, "k", items)
            await trio.sleep(10)
    assert outcomes.error_types() == {("z", 0): tb.Rejected, ("c", 3): tb.Rejected}
    assert [(names([i])[0], t) for _, i, t in process.calls] == [(["a", "b"], 5.0)]


# --- Withdrawals -------------------------------------------------------------------


async def test_withdrawals_lower_the_cost_and_readiness_from_full_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=BOUND10, cost=item_cost) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", [("x", 10)])  # runs until 1
            scopes = {}
            for item in [("a", 4), ("b", 6)]:  # [a, b] is full by cost
                scopes[item] = outcomes.spawn(nursery, b, "k", item)
                await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_cost == 10
            scopes[("b", 6)].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics().queued_cost == 4
            # [a] has room by cost again: d joins it.
            await submit_in_order(nursery, outcomes, b, "k", [("d", 5)])
            assert b.statistics().queued_cost == 9
    # [a, d] was full once: it starts when the slot frees, although at 9 < 10.
    assert [(names([i])[0], t) for _, i, t in process.calls] == [(["x"], 0.0), (["a", "d"], 1.0)]
    assert isinstance(outcomes.errors[("b", 6)], trio.Cancelled)


# --- Overflow.WAIT: by cost, first come first served -------------------------------


async def test_waiters_are_admitted_by_cost_first_come_first_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_key_concurrency=1, max_batch_queue_size=1, max_batch_cost=10, overflow=tb.Overflow.WAIT
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            # x runs; [a, b] (9) fills the queue; w1 (8) waits for room (and
            # closes [a, b]); w2 (1) would fit in [a, b] but waits behind w1.
            await submit_in_order(nursery, outcomes, b, "k", [("x", 10), ("a", 5), ("b", 4)])
            await submit_in_order(nursery, outcomes, b, "k", [("w1", 8), ("w2", 1)])
            assert b.statistics() == tb.BatcherStatistics(1, 2, 1, 2, 9)
    assert names(process.inputs()) == [["x"], ["a", "b"], ["w1", "w2"]]


async def test_a_cheap_waiter_never_jumps_an_expensive_one_until_it_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_key_concurrency=1, max_batch_queue_size=1, max_batch_cost=10, overflow=tb.Overflow.WAIT
    )
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", [("x", 10), ("a", 5)])
            scopes = {}
            for item in [("b", 4), ("w1", 8), ("w2", 1)]:
                scopes[item] = outcomes.spawn(nursery, b, "k", item)
                await trio.testing.wait_all_tasks_blocked()
            # A withdrawal lowers [a, b] to 5: room for w2, not for w1, so
            # nobody is admitted.
            scopes[("b", 4)].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics() == tb.BatcherStatistics(1, 1, 1, 2, 5)
            # w1 gives up: w2, now first in line, fits in [a].
            scopes[("w1", 8)].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert b.statistics() == tb.BatcherStatistics(1, 2, 1, 0, 6)
    assert names(process.inputs()) == [["x"], ["a", "w2"]]


# --- Every batch respects the bound ----------------------------------------------


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("oversize", list(tb.Oversize))
async def test_every_processed_batch_is_within_the_bound_or_a_lone_oversize_item(
    autojump_clock: trio.testing.MockClock, policy: Any, oversize: tb.Oversize
) -> None:
    process = Recorder(delay=0.25)
    limits = tb.Limits(
        max_batch_size=4,
        max_key_concurrency=2,
        max_batch_cost=10,
        oversize=oversize,
        overflow=tb.Overflow.WAIT,
    )
    costs = [3, 0, 7, 2.5, 11, 4, 4, 4, 0, 10, 1, 9, 0.5, 30, 6, 5, 5]
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=policy, limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            for n, cost in enumerate(costs):
                outcomes.spawn(nursery, b, n % 2, (f"i{n}", cost))
                await trio.sleep(0.1)
    for _, inputs, _ in process.calls:
        total = sum(cost for _, cost in inputs)
        assert total <= 10 or (len(inputs) == 1 and oversize is tb.Oversize.ALONE)
        assert len(inputs) <= 4
    oversize_items = {(f"i{n}", c) for n, c in enumerate(costs) if c > 10}
    if oversize is tb.Oversize.REJECT:
        assert outcomes.error_types() == dict.fromkeys(oversize_items, tb.Rejected)
    else:
        assert outcomes.errors == {}
    # Arrival order within each key.
    for key in (0, 1):
        seen = [name for name, _ in process.processed() if int(name[1:]) % 2 == key]
        assert seen == sorted(seen, key=lambda name: int(name[1:]))


# --- Observers and statistics -------------------------------------------------------


async def test_batch_events_carry_the_batch_cost(autojump_clock: trio.testing.MockClock) -> None:
    process = Recorder(delay=1.0)
    events = Events()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            process, policy=tb.Size(), limits=BOUND10, cost=item_cost, observers=[events]
        ) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", [("a", 4), ("b", 2.5), ("c", 5)])
    started = events.of(tb.BatchStarted)
    finished = events.of(tb.BatchFinished)
    assert [(e.size, e.cost) for e in started] == [(2, 6.5), (1, 5)]
    assert [(e.size, e.cost) for e in finished] == [(2, 6.5), (1, 5)]


async def test_without_a_cost_function_costs_are_none_and_queued_cost_is_0(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    events = Events()
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), observers=[events]) as b:
            await submit_in_order(nursery, Outcomes(), b, "k", [1, 2])
            assert b.statistics() == tb.BatcherStatistics(1, 2, 0, 0, 0)
    assert [e.cost for e in events.of(tb.BatchStarted)] == [None]
    assert [e.cost for e in events.of(tb.BatchFinished)] == [None]
    assert b.statistics().queued_cost == 0


async def test_batch_finished_cost_is_0_for_a_batch_never_processed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder()
    events = Events()
    outcomes = Outcomes()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            async with tb.open_batcher(
                process, policy=tb.Size(), limits=BOUND10, cost=item_cost, observers=[events]
            ) as b:
                await submit_in_order(nursery, outcomes, b, "k", [("a", 4)])
                scope.cancel()  # torn down while [a] waits
    assert outcomes.error_types() == {("a", 4): tb.BatcherClosed}
    (finished,) = events.of(tb.BatchFinished)
    assert finished.outcome is tb.BatchOutcome.CANCELLED
    assert (finished.size, finished.cost) == (0, 0)


async def test_queued_cost_counts_queued_items_across_keys_and_returns_to_0(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = Recorder(delay=1.0)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=BOUND10, cost=item_cost) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", [("x", 10), ("a", 3)])
            await submit_in_order(nursery, outcomes, b, "j", [("b", 2.5)])
            # x is processing (not queued); a and b wait.
            assert b.statistics() == tb.BatcherStatistics(2, 2, 1, 0, 5.5)
    assert b.statistics() == zero_stats()


# --- The worked example of docs/policies.md -----------------------------------------


@pytest.mark.parametrize("oversize", list(tb.Oversize))
async def test_the_worked_example_in_the_docs(
    autojump_clock: trio.testing.MockClock, oversize: tb.Oversize
) -> None:
    process = Recorder(delay=1.0)
    limits = tb.Limits(
        max_key_concurrency=1, max_batch_queue_size=4, max_batch_cost=10, oversize=oversize
    )
    items = [("a", 4), ("b", 3), ("c", 5), ("d", 2), ("e", 3), ("f", 0), ("g", 12)]
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(process, policy=tb.Size(), limits=limits, cost=item_cost) as b:
            outcomes = Outcomes()
            await submit_in_order(nursery, outcomes, b, "k", items)
    expected = [["a", "b"], ["c", "d", "e"], ["f"]]
    if oversize is tb.Oversize.REJECT:
        assert outcomes.error_types() == {("g", 12): tb.Rejected}
        assert "costs 12, more than max_batch_cost=10" in str(outcomes.errors[("g", 12)])
    else:
        expected.append(["g"])
    assert names(process.inputs()) == expected
    assert [sum(c for _, c in inputs) for inputs in process.inputs()] == [7, 10, 0, 12][
        : len(expected)
    ]


# --- Prometheus ----------------------------------------------------------------------


async def test_prometheus_exports_a_batch_cost_histogram_when_costs_exist(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from prometheus_client import CollectorRegistry

    from trio_batch.contrib.prometheus import PrometheusObserver

    registry = CollectorRegistry()
    metrics = PrometheusObserver(registry)
    async with trio.open_nursery() as nursery:
        async with tb.open_batcher(
            Recorder(delay=1.0),
            name="tokens",
            policy=tb.Size(),
            limits=BOUND10,
            cost=item_cost,
            observers=[metrics],
        ) as b:
            metrics.track(b)
            await submit_in_order(nursery, Outcomes(), b, "k", [("x", 10), ("a", 3), ("b", 2.5)])
            assert registry.get_sample_value("trio_batch_queued_cost", {"batcher": "tokens"}) == 5.5
        async with tb.open_batcher(Recorder(), name="plain", observers=[metrics]) as plain:
            await plain.submit("k", 1)
    labels = {"batcher": "tokens"}
    assert registry.get_sample_value("trio_batch_batch_cost_count", labels) == 2
    assert registry.get_sample_value("trio_batch_batch_cost_sum", labels) == 15.5
    assert registry.get_sample_value("trio_batch_batch_cost_bucket", {**labels, "le": "4.0"}) == 0
    assert registry.get_sample_value("trio_batch_batch_cost_bucket", {**labels, "le": "16.0"}) == 2
    # Without a cost function there is no cost to observe.
    assert registry.get_sample_value("trio_batch_batch_cost_count", {"batcher": "plain"}) is None
    assert registry.get_sample_value("trio_batch_batch_size_count", {"batcher": "plain"}) == 1


# --- examples/token_budget.py ----------------------------------------------------------


@pytest.mark.parametrize("oversize", list(tb.Oversize))
def test_token_budget_example_runs(
    oversize: tb.Oversize, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "token_budget.py"
    spec = importlib.util.spec_from_file_location("token_budget", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    trio.run(example.main, oversize, clock=trio.testing.MockClock(autojump_threshold=0))
    printed = capsys.readouterr().out
    assert printed.startswith(f"{oversize}: 500 prompts")
    assert all(tokens <= example.TOKEN_BUDGET or n == 1 for n, tokens in example.calls)
    if oversize is tb.Oversize.REJECT:
        assert "calls over the budget: 0" in printed
        assert "(0 rejected)" not in printed
    else:
        assert "(0 rejected)" in printed
